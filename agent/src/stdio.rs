//! A process's stdio inside the agent: the pipes (or the pty master) between the
//! container process and the agent, and the pumps that move bytes between them and a
//! host stream connection. It owns buffering, back-pressure and end-of-stream; it must
//! not know about containers or requests.
//!
//! Back-pressure: each output pump holds one buffer of at most
//! [`MAX_DATA_FRAME`](crate::protocol::MAX_DATA_FRAME) bytes and reads the pipe only
//! after the previous frame was written to the host, so a slow host fills the pipe and
//! then blocks the container's writes; nothing is dropped. Before the host attaches a
//! stream, output waits in the pipe the same way. If a stream connection breaks, the
//! unsent buffer is kept and the next attachment continues from it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};

use crate::protocol::{read_frame, write_frame, FrameError, MAX_DATA_FRAME};
use crate::util::{lock, wait};

/// Why a stream cannot be attached.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttachError {
    #[error("was not requested when the process was created")]
    NotRequested,
    #[error("is already attached")]
    Busy,
    #[error("has already been read to its end")]
    Finished,
    #[error("is closed")]
    Closed,
}

#[derive(Debug)]
enum OutState {
    /// The stream was not requested; the process writes to /dev/null.
    Unused,
    /// Waiting for the host; `pending` holds bytes read but not yet delivered.
    Ready {
        src: File,
        pending: Vec<u8>,
    },
    Attached,
    /// The end-of-stream frame was written to the host.
    Done,
}

/// One output stream (stdout, stderr, or a pty's output) of a process.
#[derive(Debug)]
pub struct OutputSlot {
    state: Mutex<OutState>,
    cv: Condvar,
    /// A pty master reports the end of output as `EIO`.
    pty: bool,
}

impl OutputSlot {
    pub fn unused() -> Self {
        Self {
            state: Mutex::new(OutState::Unused),
            cv: Condvar::new(),
            pty: false,
        }
    }

    pub fn new(src: File, pty: bool) -> Self {
        Self {
            state: Mutex::new(OutState::Ready {
                src,
                pending: Vec::new(),
            }),
            cv: Condvar::new(),
            pty,
        }
    }

    fn take(&self) -> Result<(File, Vec<u8>), AttachError> {
        let mut g = lock(&self.state);
        match std::mem::replace(&mut *g, OutState::Attached) {
            OutState::Ready { src, pending } => Ok((src, pending)),
            other => {
                let err = match other {
                    OutState::Unused => AttachError::NotRequested,
                    OutState::Attached => AttachError::Busy,
                    _ => AttachError::Finished,
                };
                *g = other;
                Err(err)
            }
        }
    }

    fn give_back(&self, src: File, pending: Vec<u8>) {
        *lock(&self.state) = OutState::Ready { src, pending };
        self.cv.notify_all();
    }

    fn finish(&self) {
        *lock(&self.state) = OutState::Done;
        self.cv.notify_all();
    }

    /// True when the stream was not requested or has been delivered to its end.
    pub fn is_drained(&self) -> bool {
        matches!(*lock(&self.state), OutState::Unused | OutState::Done)
    }

    /// Blocks until [`OutputSlot::is_drained`].
    pub fn wait_drained(&self) {
        let mut g = lock(&self.state);
        while !matches!(*g, OutState::Unused | OutState::Done) {
            g = wait(&self.cv, g);
        }
    }

    /// Drops the pipe (the process is being deleted); the stream counts as drained.
    pub fn discard(&self) {
        let mut g = lock(&self.state);
        if matches!(*g, OutState::Ready { .. }) {
            *g = OutState::Done;
        }
        drop(g);
        self.cv.notify_all();
    }

    /// Checks that the stream can be attached, before the handshake reply says so.
    pub fn check_attachable(&self) -> Result<(), AttachError> {
        match *lock(&self.state) {
            OutState::Ready { .. } => Ok(()),
            OutState::Unused => Err(AttachError::NotRequested),
            OutState::Attached => Err(AttachError::Busy),
            OutState::Done => Err(AttachError::Finished),
        }
    }

    /// Copies the stream to `sink` as data frames until the process side reaches its
    /// end, then writes the end-of-stream frame. Returns `Ok(true)` when the stream
    /// was delivered to its end, `Ok(false)` when `sink` failed (the slot is ready for
    /// another attachment, nothing lost).
    pub fn pump<W: Write>(&self, sink: &mut W) -> Result<bool, AttachError> {
        let (mut src, mut pending) = self.take()?;
        let mut buf = vec![0u8; MAX_DATA_FRAME];
        loop {
            if !pending.is_empty() {
                if let Err(e) = write_frame(sink, &pending) {
                    tracing::debug!("output stream: host went away: {e}");
                    self.give_back(src, pending);
                    return Ok(false);
                }
                pending.clear();
            }
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => pending.extend_from_slice(buf.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The pty master answers EIO once every slave descriptor is closed.
                Err(e) if self.pty && e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) => {
                    tracing::warn!("output stream: read: {e}; ending the stream");
                    break;
                }
            }
        }
        if let Err(e) = write_frame(sink, &[]) {
            tracing::debug!("output stream: end-of-stream frame: {e}");
            self.give_back(src, pending);
            return Ok(false);
        }
        self.finish();
        Ok(true)
    }
}

#[derive(Debug)]
enum InState {
    Unused,
    Open(Arc<File>),
    Closed,
}

/// A process's stdin: the write end of its stdin pipe, or a pty master.
#[derive(Debug)]
pub struct StdinSlot {
    state: Mutex<InState>,
    attached: Mutex<bool>,
    /// In TTY mode closing stdin sends the terminal's EOF character instead.
    pty: bool,
}

/// `VEOF` of a terminal in its default settings (^D).
const TTY_EOF: u8 = 0x04;

impl StdinSlot {
    pub fn unused() -> Self {
        Self {
            state: Mutex::new(InState::Unused),
            attached: Mutex::new(false),
            pty: false,
        }
    }

    pub fn new(sink: File, pty: bool) -> Self {
        Self {
            state: Mutex::new(InState::Open(Arc::new(sink))),
            attached: Mutex::new(false),
            pty,
        }
    }

    fn sink(&self) -> Result<Arc<File>, AttachError> {
        match &*lock(&self.state) {
            InState::Open(f) => Ok(f.clone()),
            InState::Unused => Err(AttachError::NotRequested),
            InState::Closed => Err(AttachError::Closed),
        }
    }

    /// Checks that stdin can be attached.
    pub fn check_attachable(&self) -> Result<(), AttachError> {
        self.sink()?;
        if *lock(&self.attached) {
            return Err(AttachError::Busy);
        }
        Ok(())
    }

    /// Closes stdin: the process reads EOF once it has read what was written. In TTY
    /// mode, writes the terminal's EOF character.
    pub fn close(&self) -> Result<(), AttachError> {
        if self.pty {
            let sink = self.sink()?;
            return (&*sink)
                .write_all(&[TTY_EOF])
                .map_err(|_| AttachError::Closed);
        }
        let mut g = lock(&self.state);
        match std::mem::replace(&mut *g, InState::Closed) {
            InState::Open(_) => Ok(()),
            InState::Closed => Err(AttachError::Closed),
            InState::Unused => {
                *g = InState::Unused;
                Err(AttachError::NotRequested)
            }
        }
    }

    /// Drops the pipe (the process is being deleted).
    pub fn discard(&self) {
        let mut g = lock(&self.state);
        if matches!(*g, InState::Open(_)) {
            *g = InState::Closed;
        }
    }

    /// Copies data frames from `source` into stdin until an empty frame or the end of
    /// the connection, then closes stdin (except in TTY mode, where the terminal stays
    /// open for another attachment). Writes block while the process does not read:
    /// that is the back-pressure on the host.
    pub fn pump<R: Read>(&self, source: &mut R) -> Result<(), AttachError> {
        {
            let mut attached = lock(&self.attached);
            if *attached {
                return Err(AttachError::Busy);
            }
            self.sink()?;
            *attached = true;
        }
        loop {
            match read_frame(source, MAX_DATA_FRAME) {
                Ok(Some(data)) if !data.is_empty() => {
                    // Re-check each time: close_stdin may have closed it meanwhile.
                    let Ok(sink) = self.sink() else { break };
                    if let Err(e) = (&*sink).write_all(&data) {
                        tracing::debug!("stdin: write: {e}");
                        break;
                    }
                }
                Ok(_) => break,
                Err(FrameError::TooLarge { len, max }) => {
                    tracing::warn!("stdin stream: frame of {len} bytes exceeds {max}; closing");
                    break;
                }
                Err(e) => {
                    tracing::debug!("stdin stream: {e}");
                    break;
                }
            }
        }
        if !self.pty {
            let _ = self.close();
        }
        *lock(&self.attached) = false;
        Ok(())
    }
}

/// A pipe whose both ends are close-on-exec.
pub fn pipe() -> io::Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((File::from(r), File::from(w)))
}

/// `/dev/null`, close-on-exec, for a stream the host did not ask for.
pub fn dev_null(write: bool) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?;
    Ok(OwnedFd::from(f))
}

/// Sets a pty's window size.
pub fn set_window_size(pty: &File, rows: u16, cols: u16) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` we own; the descriptor is a valid open file.
    let rc = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = read_frame(&mut bytes, MAX_DATA_FRAME).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn output_is_framed_and_ends_with_an_empty_frame() {
        let (r, mut w) = pipe().unwrap();
        w.write_all(b"hello").unwrap();
        drop(w);
        let slot = OutputSlot::new(r, false);
        assert!(!slot.is_drained());
        let mut sink = Vec::new();
        assert_eq!(slot.pump(&mut sink), Ok(true));
        assert_eq!(frames(&sink), vec![b"hello".to_vec(), Vec::new()]);
        assert!(slot.is_drained());
        assert_eq!(slot.pump(&mut Vec::new()), Err(AttachError::Finished));
    }

    /// A sink that fails after accepting `budget` bytes.
    struct Flaky {
        got: Vec<u8>,
        budget: usize,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            let n = buf.len().min(self.budget);
            self.got.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_attachment_loses_nothing() {
        let (r, mut w) = pipe().unwrap();
        w.write_all(b"first chunk").unwrap();
        let slot = OutputSlot::new(r, false);
        // The host dies in the middle of the first frame.
        let mut flaky = Flaky {
            got: Vec::new(),
            budget: 6,
        };
        assert_eq!(slot.pump(&mut flaky), Ok(false));
        assert!(!slot.is_drained());
        w.write_all(b", second").unwrap();
        drop(w);
        let mut sink = Vec::new();
        assert_eq!(slot.pump(&mut sink), Ok(true));
        let data: Vec<u8> = frames(&sink).concat();
        assert_eq!(data, b"first chunk, second");
    }

    #[test]
    fn unrequested_streams_count_as_drained() {
        let slot = OutputSlot::unused();
        assert!(slot.is_drained());
        slot.wait_drained();
        assert_eq!(slot.pump(&mut Vec::new()), Err(AttachError::NotRequested));
        assert_eq!(
            StdinSlot::unused().check_attachable(),
            Err(AttachError::NotRequested)
        );
    }

    #[test]
    fn stdin_frames_reach_the_pipe_and_end_closes_it() {
        let (r, w) = pipe().unwrap();
        let slot = StdinSlot::new(w, false);
        let mut wire = Vec::new();
        write_frame(&mut wire, b"abc").unwrap();
        write_frame(&mut wire, b"def").unwrap();
        write_frame(&mut wire, b"").unwrap();
        slot.pump(&mut Cursor::new(wire)).unwrap();
        let mut got = String::new();
        (&r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "abcdef");
        assert_eq!(slot.check_attachable(), Err(AttachError::Closed));
    }

    #[test]
    fn close_stdin_without_attachment() {
        let (r, w) = pipe().unwrap();
        let slot = StdinSlot::new(w, false);
        slot.close().unwrap();
        let mut got = Vec::new();
        (&r).read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
        assert_eq!(slot.close(), Err(AttachError::Closed));
    }

    #[test]
    fn oversized_stdin_frame_closes_stdin() {
        let (r, w) = pipe().unwrap();
        let slot = StdinSlot::new(w, false);
        let mut wire = Vec::new();
        wire.extend_from_slice(&((MAX_DATA_FRAME + 1) as u32).to_le_bytes());
        slot.pump(&mut Cursor::new(wire)).unwrap();
        let mut got = Vec::new();
        (&r).read_to_end(&mut got).unwrap();
        assert!(got.is_empty());
    }
}
