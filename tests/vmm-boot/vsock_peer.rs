//! `moat-vsock-peer`: the host end of the boot test's vsock check. It runs
//! where moat-vmm runs (inside the nested test host, so it is a static binary
//! from `make static`) and talks to the guest's `/init` (`tests/vmm-boot/init.c`,
//! option `vsock=LISTEN:PEER:N`) over moat-vmm's hybrid vsock:
//!
//! - **host-connect**: connects to the VMM's Unix socket `--uds`, sends
//!   `CONNECT <guest-port>\n` and waits for `OK <port>\n`; until the guest
//!   listens the VMM refuses (closes the socket), so it retries until
//!   `--timeout`;
//! - **guest-connect**: listens on `<uds>_<host-port>` (bound before it returns
//!   from start-up, see below) and accepts the guest's connection.
//!
//! On each connection it sends `--bytes` random bytes while reading what the
//! guest sends until the guest half-closes, then half-closes itself after its
//! last byte, and prints one line per connection on stdout:
//! `vsock-peer <kind> sent=<n> sha256=<hex> received=<m> sha256=<hex>`, the
//! same fields as the guest's `moat-boot-test: vsock <kind> ...` line, so the
//! test can cross-check the hashes. It exits 0 only if both connections
//! completed.
//!
//! The listener `<uds>_<host-port>` exists once the line `vsock-peer: ready` is
//! on stderr; the caller starts the VMM after that (or after the socket file
//! appears). Owns nothing but its two connections.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long one blocked read or write may take before the peer gives up.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between connection attempts while the guest is not listening yet.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Longest handshake answer line accepted from the VMM.
const MAX_LINE: usize = 64;

#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error(
        "usage: moat-vsock-peer --uds PATH --guest-port PORT --host-port PORT --bytes N [--timeout SECS]: {0}"
    )]
    Usage(String),
    #[error("bind {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("{kind}: {op}: {source}")]
    Io {
        kind: &'static str,
        op: &'static str,
        source: io::Error,
    },
    #[error("{kind}: no connection within {after:?} (last: {last})")]
    Timeout {
        kind: &'static str,
        after: Duration,
        last: String,
    },
    #[error("{kind}: the exchange thread panicked")]
    Panicked { kind: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Args {
    uds: PathBuf,
    guest_port: u32,
    host_port: u32,
    bytes: usize,
    timeout: Duration,
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Args, PeerError> {
    let mut uds = None;
    let (mut guest_port, mut host_port, mut bytes) = (None, None, None);
    let mut timeout = Duration::from_secs(300);
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| PeerError::Usage(format!("{flag} needs a value")))?;
        let number = |what: &str| -> Result<u64, PeerError> {
            value
                .parse()
                .map_err(|_| PeerError::Usage(format!("{what}: not a number: {value}")))
        };
        match flag.as_str() {
            "--uds" => uds = Some(PathBuf::from(&value)),
            "--guest-port" => guest_port = Some(port(number("--guest-port")?)?),
            "--host-port" => host_port = Some(port(number("--host-port")?)?),
            "--bytes" => {
                bytes = Some(
                    usize::try_from(number("--bytes")?)
                        .map_err(|_| PeerError::Usage("--bytes: too large".into()))?,
                )
            }
            "--timeout" => timeout = Duration::from_secs(number("--timeout")?),
            _ => return Err(PeerError::Usage(format!("unknown flag {flag}"))),
        }
    }
    let missing = |what: &str| PeerError::Usage(format!("{what} is required"));
    Ok(Args {
        uds: uds.ok_or_else(|| missing("--uds"))?,
        guest_port: guest_port.ok_or_else(|| missing("--guest-port"))?,
        host_port: host_port.ok_or_else(|| missing("--host-port"))?,
        bytes: bytes.ok_or_else(|| missing("--bytes"))?,
        timeout,
    })
}

/// A vsock port: any u32 but `VMADDR_PORT_ANY`.
fn port(n: u64) -> Result<u32, PeerError> {
    u32::try_from(n)
        .ok()
        .filter(|p| *p != u32::MAX)
        .ok_or_else(|| PeerError::Usage(format!("port out of range: {n}")))
}

/// What one connection carried, each way.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exchange {
    sent: usize,
    sent_sha256: String,
    received: usize,
    received_sha256: String,
}

impl Exchange {
    fn line(&self, kind: &str) -> String {
        format!(
            "vsock-peer {kind} sent={} sha256={} received={} sha256={}",
            self.sent, self.sent_sha256, self.received, self.received_sha256
        )
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` bytes from the kernel's random source.
fn random_bytes(n: usize) -> io::Result<Vec<u8>> {
    let mut data = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut data)?;
    Ok(data)
}

/// Sends `data` and half-closes, while reading until the other side
/// half-closes; both at once, so neither side's buffers can fill up and stall.
fn exchange(stream: UnixStream, data: Vec<u8>, kind: &'static str) -> Result<Exchange, PeerError> {
    let io = |op| move |source| PeerError::Io { kind, op, source };
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(io("set read timeout"))?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(io("set write timeout"))?;
    let mut writer = stream.try_clone().map_err(io("clone socket"))?;
    let sent_sha256 = hex(&Sha256::digest(&data));
    let sent = data.len();
    let send = thread::spawn(move || -> io::Result<()> {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream;
    let mut hash = Sha256::new();
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let read_result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                hash.update(&buf[..n]);
                received += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let send_result = send.join().map_err(|_| PeerError::Panicked { kind })?;
    send_result.map_err(io("send"))?;
    read_result.map_err(io("receive"))?;
    Ok(Exchange {
        sent,
        sent_sha256,
        received,
        received_sha256: hex(&hash.finalize()),
    })
}

/// Reads the VMM's handshake answer one byte at a time (no byte of the guest's
/// data may be consumed with it). `Ok(None)`: the VMM closed the socket, i.e.
/// refused.
fn read_line(stream: &mut UnixStream) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_LINE => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "handshake answer longer than 64 bytes",
                ))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// Whether `line` is the VMM's acceptance, `OK <decimal port>`.
fn is_ok_line(line: &str) -> bool {
    line.strip_prefix("OK ")
        .is_some_and(|p| !p.is_empty() && p.parse::<u32>().is_ok())
}

/// Connects to the guest's `port` through the VMM's socket `uds`, retrying
/// until `deadline` while the socket is missing or the guest refuses.
fn connect_to_guest(uds: &Path, port: u32, deadline: Instant) -> Result<UnixStream, PeerError> {
    const KIND: &str = "host-connect";
    let start = Instant::now();
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        match UnixStream::connect(uds) {
            Ok(mut stream) => {
                stream
                    .set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|source| PeerError::Io {
                        kind: KIND,
                        op: "set read timeout",
                        source,
                    })?;
                let answer = stream
                    .write_all(format!("CONNECT {port}\n").as_bytes())
                    .and_then(|()| read_line(&mut stream));
                match answer {
                    Ok(Some(line)) if is_ok_line(&line) => return Ok(stream),
                    Ok(Some(line)) => last = format!("unexpected answer {line:?}"),
                    Ok(None) => last = "the vmm closed the connection (guest not listening)".into(),
                    Err(e) => last = format!("handshake: {e}"),
                }
            }
            Err(e) => last = format!("connect {}: {e}", uds.display()),
        }
        thread::sleep(RETRY_PAUSE);
    }
    Err(PeerError::Timeout {
        kind: KIND,
        after: start.elapsed(),
        last,
    })
}

/// Accepts one connection on `listener` before `deadline`.
fn accept_from_guest(listener: &UnixListener, deadline: Instant) -> Result<UnixStream, PeerError> {
    const KIND: &str = "guest-connect";
    let io = |op| {
        move |source| PeerError::Io {
            kind: KIND,
            op,
            source,
        }
    };
    listener
        .set_nonblocking(true)
        .map_err(io("set nonblocking"))?;
    let start = Instant::now();
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(io("set blocking"))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(RETRY_PAUSE),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("accept")(e)),
        }
    }
    Err(PeerError::Timeout {
        kind: KIND,
        after: start.elapsed(),
        last: "the guest did not connect".into(),
    })
}

/// `<uds>_<port>`: where the VMM connects a guest's connection to host `port`.
fn listener_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

fn run(args: Args) -> Result<(), PeerError> {
    let deadline = Instant::now() + args.timeout;
    let path = listener_path(&args.uds, args.host_port);
    let listener = UnixListener::bind(&path).map_err(|source| PeerError::Bind {
        path: path.clone(),
        source,
    })?;
    eprintln!("vsock-peer: ready");
    let random = |kind| {
        random_bytes(args.bytes).map_err(|source| PeerError::Io {
            kind,
            op: "read /dev/urandom",
            source,
        })
    };
    let (to_guest, from_guest) = (random("host-connect")?, random("guest-connect")?);
    let uds = args.uds.clone();
    let guest_port = args.guest_port;
    let host_side = thread::spawn(move || {
        let stream = connect_to_guest(&uds, guest_port, deadline)?;
        exchange(stream, to_guest, "host-connect")
    });
    let guest_side = accept_from_guest(&listener, deadline)
        .and_then(|stream| exchange(stream, from_guest, "guest-connect"));
    let host_side = host_side.join().map_err(|_| PeerError::Panicked {
        kind: "host-connect",
    })?;
    let _ = std::fs::remove_file(&path);
    // Report whatever completed before failing on what did not.
    for (kind, result) in [("guest-connect", &guest_side), ("host-connect", &host_side)] {
        if let Ok(x) = result {
            println!("{}", x.line(kind));
        }
    }
    guest_side?;
    host_side?;
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vsock-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, PeerError> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn arguments_are_parsed_and_checked() {
        let a = args("--uds /t/v.sock --guest-port 5000 --host-port 5001 --bytes 1048576").unwrap();
        assert_eq!(a.uds, PathBuf::from("/t/v.sock"));
        assert_eq!((a.guest_port, a.host_port, a.bytes), (5000, 5001, 1 << 20));
        assert_eq!(a.timeout, Duration::from_secs(300));
        let a = args("--uds u --guest-port 1 --host-port 2 --bytes 0 --timeout 7").unwrap();
        assert_eq!(a.timeout, Duration::from_secs(7));
        for bad in [
            "",
            "--uds u --guest-port 1 --host-port 2",
            "--uds u --guest-port x --host-port 2 --bytes 1",
            "--uds u --guest-port 4294967295 --host-port 2 --bytes 1",
            "--uds u --guest-port 4294967296 --host-port 2 --bytes 1",
            "--uds u --guest-port 1 --host-port 2 --bytes 1 --what 3",
            "--uds",
        ] {
            assert!(matches!(args(bad), Err(PeerError::Usage(_))), "{bad:?}");
        }
    }

    #[test]
    fn handshake_answers_are_recognised() {
        assert!(is_ok_line("OK 1073741824"));
        assert!(!is_ok_line("OK "));
        assert!(!is_ok_line("OK x"));
        assert!(!is_ok_line("ok 5"));
        assert!(!is_ok_line("OK 5 6"));
        assert_eq!(
            listener_path(Path::new("/t/v.sock"), 5001),
            PathBuf::from("/t/v.sock_5001")
        );
    }

    #[test]
    fn exchange_hashes_both_directions() {
        let (a, b) = UnixStream::pair().unwrap();
        let big = random_bytes(3 << 20).unwrap();
        let small = b"from the other side".to_vec();
        let other = thread::spawn(move || exchange(b, small, "guest-connect").unwrap());
        let here = exchange(a, big.clone(), "host-connect").unwrap();
        let there = other.join().unwrap();
        assert_eq!(here.sent, 3 << 20);
        assert_eq!(here.sent_sha256, hex(&Sha256::digest(&big)));
        assert_eq!(here.received, 19);
        assert_eq!(here.received_sha256, there.sent_sha256);
        assert_eq!(there.received_sha256, here.sent_sha256);
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(here
            .line("host-connect")
            .starts_with("vsock-peer host-connect sent=3145728 sha256="));
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("moat-vsock-peer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A stand-in VMM socket: refuses the first client (as the VMM does while
    /// the guest is not listening), accepts the second and echoes the payload.
    #[test]
    fn host_connect_retries_until_the_guest_listens() {
        let dir = scratch("retry");
        let uds = dir.join("v.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        let vmm = thread::spawn(move || {
            let (mut first, _) = listener.accept().unwrap();
            assert_eq!(
                read_line(&mut first).unwrap().as_deref(),
                Some("CONNECT 5000")
            );
            drop(first);
            let (mut second, _) = listener.accept().unwrap();
            assert_eq!(
                read_line(&mut second).unwrap().as_deref(),
                Some("CONNECT 5000")
            );
            second.write_all(b"OK 1073741824\n").unwrap();
            let mut got = Vec::new();
            second.read_to_end(&mut got).unwrap();
            second.write_all(&got).unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = connect_to_guest(&uds, 5000, deadline).unwrap();
        let x = exchange(stream, b"payload".to_vec(), "host-connect").unwrap();
        vmm.join().unwrap();
        assert_eq!((x.sent, x.received), (7, 7));
        assert_eq!(x.sent_sha256, x.received_sha256);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn giving_up_names_the_last_failure() {
        let dir = scratch("giveup");
        let deadline = Instant::now() + Duration::from_millis(200);
        let err = connect_to_guest(&dir.join("missing.sock"), 1, deadline).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("host-connect: no connection within"),
            "{msg}"
        );
        assert!(msg.contains("missing.sock"), "{msg}");
        let listener = UnixListener::bind(dir.join("l.sock")).unwrap();
        let err =
            accept_from_guest(&listener, Instant::now() + Duration::from_millis(100)).unwrap_err();
        assert!(
            err.to_string().contains("the guest did not connect"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
