//! Stream sockets the agent serves on: a vsock listener in the guest, a Unix listener in
//! host mode, and [`Conn`], one accepted connection of either kind. It owns socket
//! set-up and byte I/O; it must not interpret what flows over a connection.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

/// `VMADDR_CID_ANY`: accept connections to any of the guest's CIDs.
const VMADDR_CID_ANY: u32 = u32::MAX;

/// One accepted connection (vsock or Unix). Reads and writes go straight to the
/// socket; clones share it.
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
}

impl Conn {
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// A second handle on the same socket (for a reader and a writer thread).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
        })
    }

    /// Ends the write direction; the peer reads EOF.
    pub fn shutdown_write(&self) -> io::Result<()> {
        socket::shutdown(self.fd.as_raw_fd(), socket::Shutdown::Write).map_err(io::Error::from)
    }

    /// Ends both directions, waking up a thread blocked reading this socket.
    pub fn shutdown_both(&self) -> io::Result<()> {
        socket::shutdown(self.fd.as_raw_fd(), socket::Shutdown::Both).map_err(io::Error::from)
    }

    /// Bounds blocking reads (`None`: no bound).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let tv = match timeout {
            Some(d) => nix::sys::time::TimeVal::new(
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                i64::from(d.subsec_micros()),
            ),
            None => nix::sys::time::TimeVal::new(0, 0),
        };
        socket::setsockopt(&self.fd, socket::sockopt::ReceiveTimeout, &tv).map_err(io::Error::from)
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::read(self.fd.as_raw_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // MSG_NOSIGNAL: a peer that went away is an error, not a SIGPIPE.
            match socket::send(self.fd.as_raw_fd(), buf, socket::MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => return Ok(n),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the agent accepts connections.
#[derive(Debug)]
pub enum Listener {
    Vsock(OwnedFd),
    Unix(UnixListener),
}

impl Listener {
    /// Listens on vsock `port` for any CID.
    pub fn vsock(port: u32) -> io::Result<Self> {
        let fd = socket::socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        socket::bind(fd.as_raw_fd(), &VsockAddr::new(VMADDR_CID_ANY, port))?;
        socket::listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
        Ok(Listener::Vsock(fd))
    }

    /// Listens on a Unix socket at `path`, replacing a stale socket file.
    pub fn unix(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Listener::Unix(UnixListener::bind(path)?))
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Vsock(fd) => loop {
                match socket::accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                    Ok(raw) => {
                        // SAFETY: accept4 returned a new descriptor that nothing else owns.
                        let owned =
                            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                        return Ok(Conn::from_fd(owned));
                    }
                    Err(nix::Error::EINTR) | Err(nix::Error::ECONNABORTED) => continue,
                    Err(e) => return Err(e.into()),
                }
            },
            Listener::Unix(l) => {
                let (stream, _) = l.accept()?;
                Ok(Conn::from_fd(OwnedFd::from(stream)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn unix_round_trip_and_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let l = Listener::unix(&path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        let conn = l.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        (&conn).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        (&conn).write_all(b"pong").unwrap();
        conn.shutdown_write().unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"pong");
        // A second listener on the same path replaces the stale socket file.
        drop(l);
        assert!(Listener::unix(&path).is_ok());
    }

    #[test]
    fn read_timeout() {
        let (a, _b) = UnixStream::pair().unwrap();
        let conn = Conn::from_fd(OwnedFd::from(a));
        conn.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = [0u8; 1];
        let err = (&conn).read(&mut buf).unwrap_err();
        assert!(matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
    }
}
