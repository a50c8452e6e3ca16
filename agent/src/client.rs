//! Host-side client of the agent protocol: opening a connection (host mode's Unix
//! socket, or the VMM's hybrid-vsock Unix socket with `CONNECT <port>`), the handshake,
//! typed request/response calls on a control channel, and attaching stdio streams.
//! moatd wraps this; it converts wire types into its own at this edge. Blocking I/O: an
//! async caller runs it on a blocking thread. It must not know about containers beyond
//! the wire types.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{
    read_frame, write_frame, write_json, Channel, Configure, ContainerStats, CreateRequest,
    ExecRequest, ExitStatus, FrameError, Hello, HelloReply, Outcome, ProcessRef, Request,
    RequestFrame, ResizeTty, Response, ResponseFrame, SignalRequest, StreamKind, WireError,
    AGENT_VSOCK_PORT, MAX_CONTROL_FRAME, MAX_DATA_FRAME, PROTOCOL_VERSION,
};

/// Client-side failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent connection: {0}")]
    Io(#[from] io::Error),
    #[error("agent connection: {0}")]
    Frame(#[from] FrameError),
    #[error("agent connection: closed by the agent")]
    Closed,
    #[error("agent refused the connection: {0}")]
    Refused(WireError),
    #[error("agent: {0}")]
    Agent(WireError),
    #[error("agent protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The agent's error, when the agent answered with one.
    pub fn wire(&self) -> Option<&WireError> {
        match self {
            ClientError::Agent(e) | ClientError::Refused(e) => Some(e),
            _ => None,
        }
    }
}

/// Opens new connections to one agent.
pub trait Connect {
    type Stream: Read + Write;
    fn connect(&self) -> io::Result<Self::Stream>;
}

/// Host mode: the agent listens on a Unix socket.
#[derive(Debug, Clone)]
pub struct UnixConnector(pub PathBuf);

impl Connect for UnixConnector {
    type Stream = UnixStream;
    fn connect(&self) -> io::Result<UnixStream> {
        UnixStream::connect(&self.0)
    }
}

/// A guest: the VMM's hybrid-vsock Unix socket, port [`AGENT_VSOCK_PORT`].
#[derive(Debug, Clone)]
pub struct VsockConnector {
    pub uds: PathBuf,
    pub port: u32,
}

impl VsockConnector {
    pub fn new(uds: impl Into<PathBuf>) -> Self {
        Self {
            uds: uds.into(),
            port: AGENT_VSOCK_PORT,
        }
    }
}

impl Connect for VsockConnector {
    type Stream = UnixStream;
    fn connect(&self) -> io::Result<UnixStream> {
        vsock_connect(&self.uds, self.port)
    }
}

/// Connects to guest vsock `port` through a Firecracker-style hybrid vsock Unix
/// socket: writes `CONNECT <port>\n` and expects `OK <n>\n`. Reads the reply byte by
/// byte so nothing after it is consumed.
pub fn vsock_connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        match s.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => {
                let text = String::from_utf8_lossy(&line);
                if text.starts_with("OK ") {
                    s.set_read_timeout(None)?;
                    return Ok(s);
                }
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("vsock connect to port {port}: VMM answered {text:?}"),
                ));
            }
            _ => line.push(byte[0]),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("vsock connect to port {port}: no OK from the VMM"),
    ))
}

/// Sends the handshake for `channel` and reads the agent's answer.
pub fn handshake<S: Read + Write>(
    stream: &mut S,
    channel: Channel,
) -> Result<HelloReply, ClientError> {
    write_json(
        stream,
        &Hello {
            version: PROTOCOL_VERSION,
            channel,
        },
    )?;
    let payload = read_frame(stream, MAX_CONTROL_FRAME)?.ok_or(ClientError::Closed)?;
    let reply: HelloReply = serde_json::from_slice(&payload)
        .map_err(|e| ClientError::Protocol(format!("decode hello reply: {e}")))?;
    match reply.error {
        Some(e) => Err(ClientError::Refused(e)),
        None => Ok(reply),
    }
}

/// A control channel.
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    next_id: u64,
    agent: String,
}

impl<S: Read + Write> Client<S> {
    /// Handshakes a control channel on `stream`.
    pub fn new(mut stream: S) -> Result<Self, ClientError> {
        let reply = handshake(&mut stream, Channel::Control)?;
        Ok(Self {
            stream,
            next_id: 1,
            agent: reply.agent,
        })
    }

    /// The agent's build version.
    pub fn agent_version(&self) -> &str {
        &self.agent
    }

    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        write_json(&mut self.stream, &RequestFrame { id, request })?;
        let payload =
            read_frame(&mut self.stream, MAX_CONTROL_FRAME)?.ok_or(ClientError::Closed)?;
        let frame: ResponseFrame = serde_json::from_slice(&payload)
            .map_err(|e| ClientError::Protocol(format!("decode response: {e}")))?;
        if frame.id != id && frame.id != 0 {
            return Err(ClientError::Protocol(format!(
                "response for request {} while waiting for {id}",
                frame.id
            )));
        }
        match frame.outcome {
            Outcome::Ok(r) => Ok(r),
            Outcome::Error(e) => Err(ClientError::Agent(e)),
        }
    }

    fn unexpected<T>(what: &str, r: Response) -> Result<T, ClientError> {
        Err(ClientError::Protocol(format!(
            "{what}: unexpected answer {r:?}"
        )))
    }

    pub fn ping(&mut self) -> Result<String, ClientError> {
        match self.call(Request::Ping)? {
            Response::Pong { agent, .. } => Ok(agent),
            r => Self::unexpected("ping", r),
        }
    }

    pub fn configure(&mut self, cfg: Configure) -> Result<(), ClientError> {
        match self.call(Request::Configure(cfg))? {
            Response::Configured => Ok(()),
            r => Self::unexpected("configure", r),
        }
    }

    /// Returns the init pid and the agent's time on the request (µs).
    pub fn create(&mut self, req: CreateRequest) -> Result<(i32, u64), ClientError> {
        match self.call(Request::Create(Box::new(req)))? {
            Response::Created { pid, agent_us } => Ok((pid, agent_us)),
            r => Self::unexpected("create", r),
        }
    }

    /// Returns the agent's time on the request (µs).
    pub fn start(&mut self, container: &str) -> Result<u64, ClientError> {
        match self.call(Request::Start {
            container: container.to_owned(),
        })? {
            Response::Started { agent_us } => Ok(agent_us),
            r => Self::unexpected("start", r),
        }
    }

    pub fn exec(&mut self, req: ExecRequest) -> Result<(i32, u64), ClientError> {
        match self.call(Request::Exec(Box::new(req)))? {
            Response::ExecStarted { pid, agent_us } => Ok((pid, agent_us)),
            r => Self::unexpected("exec", r),
        }
    }

    pub fn signal(
        &mut self,
        container: &str,
        exec: Option<&str>,
        signal: i32,
    ) -> Result<(), ClientError> {
        match self.call(Request::Signal(SignalRequest {
            container: container.to_owned(),
            exec: exec.map(str::to_owned),
            signal,
        }))? {
            Response::Signaled => Ok(()),
            r => Self::unexpected("signal", r),
        }
    }

    /// Waits for the exit; the output streams have been delivered when it returns.
    pub fn wait(&mut self, container: &str, exec: Option<&str>) -> Result<ExitStatus, ClientError> {
        match self.call(Request::Wait(ProcessRef {
            container: container.to_owned(),
            exec: exec.map(str::to_owned),
        }))? {
            Response::Exited(s) => Ok(s),
            r => Self::unexpected("wait", r),
        }
    }

    pub fn resize_tty(
        &mut self,
        container: &str,
        exec: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), ClientError> {
        match self.call(Request::ResizeTty(ResizeTty {
            container: container.to_owned(),
            exec: exec.map(str::to_owned),
            rows,
            cols,
        }))? {
            Response::Resized => Ok(()),
            r => Self::unexpected("resize_tty", r),
        }
    }

    pub fn close_stdin(&mut self, container: &str, exec: Option<&str>) -> Result<(), ClientError> {
        match self.call(Request::CloseStdin(ProcessRef {
            container: container.to_owned(),
            exec: exec.map(str::to_owned),
        }))? {
            Response::StdinClosed => Ok(()),
            r => Self::unexpected("close_stdin", r),
        }
    }

    pub fn stats(&mut self, container: &str) -> Result<ContainerStats, ClientError> {
        match self.call(Request::Stats {
            container: container.to_owned(),
        })? {
            Response::Stats(s) => Ok(s),
            r => Self::unexpected("stats", r),
        }
    }

    pub fn delete(&mut self, container: &str, force: bool) -> Result<(), ClientError> {
        match self.call(Request::Delete {
            container: container.to_owned(),
            force,
        })? {
            Response::Deleted => Ok(()),
            r => Self::unexpected("delete", r),
        }
    }

    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        match self.call(Request::Shutdown)? {
            Response::ShuttingDown => Ok(()),
            r => Self::unexpected("shutdown", r),
        }
    }
}

fn stream_channel(container: &str, exec: Option<&str>, stream: StreamKind) -> Channel {
    Channel::Stream {
        container: container.to_owned(),
        exec: exec.map(str::to_owned),
        stream,
    }
}

/// An attached stdout/stderr: reads return the process's output and 0 at its end.
#[derive(Debug)]
pub struct OutputStream<S> {
    stream: S,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

/// Attaches `stream` (stdout or stderr) of a process.
pub fn attach_output<S: Read + Write>(
    mut stream: S,
    container: &str,
    exec: Option<&str>,
    kind: StreamKind,
) -> Result<OutputStream<S>, ClientError> {
    if kind == StreamKind::Stdin {
        return Err(ClientError::Protocol(
            "attach_output: stdin is an input".into(),
        ));
    }
    handshake(&mut stream, stream_channel(container, exec, kind))?;
    Ok(OutputStream {
        stream,
        buf: Vec::new(),
        pos: 0,
        done: false,
    })
}

impl<S: Read> Read for OutputStream<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match read_frame(&mut self.stream, MAX_DATA_FRAME) {
                Ok(Some(frame)) if frame.is_empty() => self.done = true,
                Ok(Some(frame)) => {
                    self.buf = frame;
                    self.pos = 0;
                }
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "output stream closed before its end-of-stream frame",
                    ))
                }
                Err(FrameError::Io(e)) => return Err(e),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(out.len());
        out.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(rest.get(..n).unwrap_or_default());
        self.pos += n;
        Ok(n)
    }
}

/// An attached stdin: writes are sent as data frames; [`InputStream::close`] ends it.
#[derive(Debug)]
pub struct InputStream<S: Write> {
    stream: S,
}

/// Attaches the stdin of a process.
pub fn attach_input<S: Read + Write>(
    mut stream: S,
    container: &str,
    exec: Option<&str>,
) -> Result<InputStream<S>, ClientError> {
    handshake(
        &mut stream,
        stream_channel(container, exec, StreamKind::Stdin),
    )?;
    Ok(InputStream { stream })
}

impl<S: Write> InputStream<S> {
    /// Sends the end of input; the process reads EOF after what was written.
    pub fn close(mut self) -> io::Result<S> {
        write_frame(&mut self.stream, &[])?;
        Ok(self.stream)
    }
}

impl<S: Write> Write for InputStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            // An empty frame would end the stream.
            return Ok(0);
        }
        let n = buf.len().min(MAX_DATA_FRAME);
        write_frame(&mut self.stream, buf.get(..n).unwrap_or_default())?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Cursor};

    /// A fake duplex stream: reads from `input`, records writes.
    #[derive(Debug)]
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn agent_says(frames: &[Vec<u8>]) -> Duplex {
        let mut input = Vec::new();
        for f in frames {
            write_frame(&mut input, f).unwrap();
        }
        Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        }
    }

    fn hello_ok() -> Vec<u8> {
        serde_json::to_vec(&HelloReply {
            version: 1,
            agent: "0.1.0".into(),
            error: None,
        })
        .unwrap()
    }

    #[test]
    fn call_matches_ids_and_maps_errors() {
        let resp = |id, outcome| serde_json::to_vec(&ResponseFrame { id, outcome }).unwrap();
        let d = agent_says(&[
            hello_ok(),
            resp(
                1,
                Outcome::Ok(Response::Pong {
                    agent: "0.1.0".into(),
                    version: 1,
                }),
            ),
            resp(
                2,
                Outcome::Error(WireError::new(
                    crate::protocol::ErrorCode::NotFound,
                    "container x: not found",
                )),
            ),
            resp(9, Outcome::Ok(Response::Deleted)),
        ]);
        let mut c = Client::new(d).unwrap();
        assert_eq!(c.agent_version(), "0.1.0");
        assert_eq!(c.ping().unwrap(), "0.1.0");
        let err = c.start("x").unwrap_err();
        assert_eq!(
            err.wire().unwrap().code,
            crate::protocol::ErrorCode::NotFound
        );
        assert!(matches!(
            c.delete("x", false),
            Err(ClientError::Protocol(_))
        ));
        // What the client sent: hello, then three requests with ids 1, 2, 3.
        let sent = c.into_inner().output;
        let mut r = &sent[..];
        let hello: Hello =
            serde_json::from_slice(&read_frame(&mut r, 1 << 20).unwrap().unwrap()).unwrap();
        assert_eq!(hello.channel, Channel::Control);
        for id in 1..=3 {
            let f: RequestFrame =
                serde_json::from_slice(&read_frame(&mut r, 1 << 20).unwrap().unwrap()).unwrap();
            assert_eq!(f.id, id);
        }
    }

    #[test]
    fn refused_handshake() {
        let refused = serde_json::to_vec(&HelloReply {
            version: 1,
            agent: "0.1.0".into(),
            error: Some(WireError::new(
                crate::protocol::ErrorCode::UnsupportedVersion,
                "no",
            )),
        })
        .unwrap();
        let err = Client::new(agent_says(&[refused])).unwrap_err();
        assert!(matches!(err, ClientError::Refused(_)));
    }

    #[test]
    fn output_stream_reads_to_the_end_frame() {
        let d = agent_says(&[hello_ok(), b"hel".to_vec(), b"lo".to_vec(), Vec::new()]);
        let mut out = attach_output(d, "c", None, StreamKind::Stdout).unwrap();
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn output_stream_without_end_frame_is_an_error() {
        let d = agent_says(&[hello_ok(), b"partial".to_vec()]);
        let mut out = attach_output(d, "c", None, StreamKind::Stderr).unwrap();
        let mut s = String::new();
        assert_eq!(
            out.read_to_string(&mut s).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn input_stream_frames_and_ends() {
        let d = agent_says(&[hello_ok()]);
        let mut input = attach_input(d, "c", Some("e1")).unwrap();
        input.write_all(b"data").unwrap();
        let d = input.close().unwrap();
        let mut r = &d.output[..];
        let _hello = read_frame(&mut r, 1 << 20).unwrap().unwrap();
        assert_eq!(read_frame(&mut r, 1 << 20).unwrap().unwrap(), b"data");
        assert_eq!(read_frame(&mut r, 1 << 20).unwrap().unwrap(), b"");
    }

    #[test]
    fn vsock_handshake_through_a_fake_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = std::os::unix::net::UnixListener::bind(&uds).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            s.write_all(b"OK 1073741824\nafter").unwrap();
        });
        let mut s = vsock_connect(&uds, AGENT_VSOCK_PORT).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "after");
        t.join().unwrap();
    }
}
