//! The host<->guest wire protocol: the one place where messages between the host side
//! (moatd, tests) and moat-agent are defined. It owns the message types, the framing and
//! the version handshake. It must not touch containers, files or processes; it only
//! reads and writes the `Read`/`Write` it is handed.
//!
//! # Transport
//! Stream sockets: in the guest, vsock port [`AGENT_VSOCK_PORT`] (the host reaches it
//! through the VMM's Unix socket with `CONNECT 1024\n`, see [`crate::client`]); in host
//! mode, a Unix socket. Every connection is one *channel*, chosen by its first frame.
//!
//! # Framing
//! Every frame is a `u32` little-endian payload length followed by the payload.
//! - The first frame on a connection, in each direction, is the handshake: the host sends
//!   [`Hello`] (JSON), the agent answers [`HelloReply`] (JSON). A version the agent does
//!   not speak gets an error reply and the connection is closed.
//! - On a control channel the host then sends [`RequestFrame`]s and the agent answers
//!   each with a [`ResponseFrame`] carrying the same `id`. Requests on one connection are
//!   served concurrently, so responses may come out of order; `wait` blocks only itself.
//!   JSON payloads are at most [`MAX_CONTROL_FRAME`] bytes.
//! - On a stream channel the frames after the handshake are raw bytes of one stdio
//!   stream, at most [`MAX_DATA_FRAME`] each; an empty frame marks the end of the
//!   stream. stdout/stderr flow agent -> host, stdin host -> agent.
//!
//! # Ordering guarantee
//! The agent answers `wait` only after the process has exited *and* every output stream
//! the process was created with has been read to its end and written to the host,
//! including the end-of-stream frame. Output is never dropped: until the host attaches
//! a stream, the process's writes stay in the pipe (and block once it is full).

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The vsock port the agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The protocol version this build speaks. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest JSON frame (handshake, request, response) either side accepts.
pub const MAX_CONTROL_FRAME: usize = 4 << 20;

/// Largest data frame on a stream channel.
pub const MAX_DATA_FRAME: usize = 64 << 10;

/// Longest container or exec id.
pub const MAX_ID_LEN: usize = 128;

/// Frame-level errors: what can go wrong reading one frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("read frame: {0}")]
    Io(#[from] io::Error),
    #[error("read frame: length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("read frame: connection closed after {got} of {expected} bytes")]
    Truncated { expected: usize, got: usize },
}

/// Writes one frame. `payload` longer than `u32::MAX` is refused.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "write frame: payload too large",
        )
    })?;
    let mut header = [0u8; 4];
    header.copy_from_slice(&len.to_le_bytes());
    w.write_all(&header)?;
    w.write_all(payload)?;
    w.flush()
}

/// Reads one frame of at most `max` bytes. `Ok(None)` means the peer closed the
/// connection cleanly at a frame boundary.
pub fn read_frame<R: Read + ?Sized>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < header.len() {
        return Err(FrameError::Truncated {
            expected: header.len(),
            got,
        });
    }
    let len = usize::try_from(u32::from_le_bytes(header)).unwrap_or(usize::MAX);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(Some(payload))
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = buf.get_mut(filled..).unwrap_or_default();
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Serializes `msg` as JSON and writes it as one frame.
pub fn write_json<W: Write + ?Sized, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let payload = serde_json::to_vec(msg)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("encode frame: {e}")))?;
    if payload.len() > MAX_CONTROL_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "encode frame: {} bytes exceed the limit of {MAX_CONTROL_FRAME}",
                payload.len()
            ),
        ));
    }
    write_frame(w, &payload)
}

// ---------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------

/// First frame from the host on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The protocol version the host speaks.
    pub version: u32,
    pub channel: Channel,
}

/// What a connection carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Channel {
    /// Requests and responses.
    Control,
    /// One stdio stream of one process.
    Stream {
        container: String,
        /// `None` for the container's init process, else the exec id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec: Option<String>,
        stream: StreamKind,
    },
}

/// Which stdio stream a stream channel carries. In TTY mode `stdout` carries the
/// terminal's output and there is no `stderr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        })
    }
}

/// The agent's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The protocol version the agent speaks.
    pub version: u32,
    /// The agent's build version (`CARGO_PKG_VERSION`).
    pub agent: String,
    /// Set when the handshake is refused; the agent closes the connection after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

// ---------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------

/// One request on a control channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    /// Chosen by the host; echoed in the response.
    pub id: u64,
    pub request: Request,
}

/// Everything the host can ask of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check.
    Ping,
    /// Runtime settings that may also come on the kernel command line.
    Configure(Configure),
    /// Build the rootfs and create (not start) a container.
    Create(Box<CreateRequest>),
    /// Start a created container's init process.
    Start { container: String },
    /// Run one more process in a running container.
    Exec(Box<ExecRequest>),
    /// Send a signal to the init process or an exec process.
    Signal(SignalRequest),
    /// Wait for a process to exit and its output to be drained.
    Wait(ProcessRef),
    /// Set a TTY process's window size.
    ResizeTty(ResizeTty),
    /// Close a process's stdin (in TTY mode: send the terminal's EOF character).
    CloseStdin(ProcessRef),
    /// cgroup statistics of a container.
    Stats { container: String },
    /// Remove a container: its cgroup, rootfs mount and state.
    Delete {
        container: String,
        /// Kill the container first if it still runs.
        #[serde(default)]
        force: bool,
    },
    /// Stop every container and power the guest off (host mode: exit the agent).
    Shutdown,
}

impl Request {
    /// The request's wire name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Configure(_) => "configure",
            Request::Create(_) => "create",
            Request::Start { .. } => "start",
            Request::Exec(_) => "exec",
            Request::Signal(_) => "signal",
            Request::Wait(_) => "wait",
            Request::ResizeTty(_) => "resize_tty",
            Request::CloseStdin(_) => "close_stdin",
            Request::Stats { .. } => "stats",
            Request::Delete { .. } => "delete",
            Request::Shutdown => "shutdown",
        }
    }
}

/// Runtime settings. Fields left out keep their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configure {
    /// Power the guest off once every container has exited and its exit was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oneshot: Option<bool>,
    /// virtio-fs shares to mount now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<Share>,
}

/// One virtio-fs device to mount: `mount -t virtiofs <tag> <path>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    pub tag: String,
    pub path: String,
}

/// `create`: the OCI runtime spec plus what the agent builds around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub container: String,
    /// The OCI runtime spec. `root.path` is replaced by the overlay mount when
    /// `rootfs` is given; `linux.cgroupsPath` defaults to `/moat/<container>`.
    pub spec: oci_spec::runtime::Spec,
    /// The overlay to build; without it `spec.root.path` must already exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootfsLayers>,
    /// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` to write and bind-mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etc: Option<EtcFiles>,
    /// Which stdio streams the host will attach. In TTY mode (`spec.process.terminal`)
    /// `stdout` is the terminal and `stderr` must be false.
    #[serde(default)]
    pub stdio: StdioConfig,
}

/// Image layers and the writable layer of a container's overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsLayers {
    /// Read-only layer directories, **lowest (base) layer first**, as in an image
    /// manifest. Whiteouts use overlayfs' own format (char device 0/0, opaque xattr).
    pub layers: Vec<String>,
    /// overlayfs `upperdir`; created if missing.
    pub upper: String,
    /// overlayfs `workdir`; created if missing; must be on the same file system as
    /// `upper`.
    pub work: String,
}

/// The files Docker writes for every container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcFiles {
    pub hostname: String,
    /// The container's own address, written as `<ip>\t<hostname>` in `/etc/hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// `--add-host` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<HostEntry>,
    #[serde(default)]
    pub dns: DnsConfig,
}

/// One `/etc/hosts` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub ip: String,
    pub names: Vec<String>,
}

/// `/etc/resolv.conf` contents. No nameserver means Docker's fallback (Google DNS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Which stdio streams the host attaches. A stream not attached is `/dev/null`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioConfig {
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdout: bool,
    #[serde(default)]
    pub stderr: bool,
}

/// `exec`: one more process in a running container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub container: String,
    pub exec: String,
    /// The OCI process: args, env, cwd, user, capabilities, terminal, console size.
    pub process: oci_spec::runtime::Process,
    #[serde(default)]
    pub stdio: StdioConfig,
}

/// Names one process: the init process of `container`, or one of its exec processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessRef {
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
}

/// `signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// Signal number (`SIGTERM` = 15).
    pub signal: i32,
}

/// `resize_tty`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeTty {
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    pub rows: u16,
    pub cols: u16,
}

// ---------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------

/// The answer to one [`RequestFrame`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFrame {
    /// The request's id; 0 when the request was too malformed to carry one.
    pub id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Success or failure of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Response),
    Error(WireError),
}

/// Successful answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Pong {
        agent: String,
        version: u32,
    },
    Configured,
    Created {
        /// The init process's pid in the agent's pid namespace.
        pid: i32,
        /// Time the agent spent on the request, in microseconds.
        agent_us: u64,
    },
    Started {
        agent_us: u64,
    },
    ExecStarted {
        pid: i32,
        agent_us: u64,
    },
    Signaled,
    Exited(ExitStatus),
    Resized,
    StdinClosed,
    Stats(ContainerStats),
    Deleted,
    ShuttingDown,
}

/// How a process ended, Docker-style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitStatus {
    /// The exit code, or 128 + signal number when a signal ended the process
    /// (SIGKILL -> 137).
    pub code: i32,
    /// The signal that ended the process, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn exited(code: i32) -> Self {
        Self { code, signal: None }
    }

    pub fn signaled(signal: i32) -> Self {
        Self {
            code: 128 + signal,
            signal: Some(signal),
        }
    }
}

/// cgroup v2 statistics; a field is absent when its controller is not available.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_usage_bytes: Option<u64>,
    /// `None` also when there is no limit (`max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage_usec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_current: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
}

/// An error as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Error classes, so the host can map them (e.g. `not_found` -> HTTP 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed frame, unknown request, invalid field.
    BadRequest,
    /// The handshake asked for a version the agent does not speak.
    UnsupportedVersion,
    NotFound,
    AlreadyExists,
    /// The object is in the wrong state (e.g. `start` on a running container).
    InvalidState,
    /// A feature this agent does not implement (yet), or this mode cannot provide.
    NotSupported,
    /// Too many requests or connections at once.
    Busy,
    /// Anything else: a system call or libcontainer failed.
    Internal,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorCode::BadRequest => "bad request",
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::NotFound => "not found",
            ErrorCode::AlreadyExists => "already exists",
            ErrorCode::InvalidState => "invalid state",
            ErrorCode::NotSupported => "not supported",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal error",
            ErrorCode::Unknown => "unknown error",
        })
    }
}

/// Checks a container or exec id: 1..=[`MAX_ID_LEN`] characters from
/// `[A-Za-z0-9_.+-]`, not `.` or `..` (the id names directories in the guest).
pub fn validate_id(what: &str, id: &str) -> Result<(), WireError> {
    let bad = |why: &str| WireError::new(ErrorCode::BadRequest, format!("{what} id {id:?}: {why}"));
    if id.is_empty() {
        return Err(bad("empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad("longer than 128 characters"));
    }
    if id == "." || id == ".." {
        return Err(bad("not a valid name"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-')))
    {
        return Err(bad(&format!("character {c:?} not allowed")));
    }
    Ok(())
}

/// Decodes a request payload. On failure it still recovers the `id` when the payload is
/// a JSON object with a numeric `id`, so the error reply can be matched.
pub fn decode_request(payload: &[u8]) -> Result<RequestFrame, (u64, WireError)> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        (
            0,
            WireError::new(ErrorCode::BadRequest, format!("decode request: {e}")),
        )
    })?;
    let id = value
        .get("id")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    serde_json::from_value(value).map_err(|e| {
        (
            id,
            WireError::new(ErrorCode::BadRequest, format!("decode request: {e}")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        write_frame(&mut buf, b"").unwrap();
        assert_eq!(&buf[..4], &5u32.to_le_bytes());
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r, 16).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 16).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 16).unwrap().is_none());
    }

    #[test]
    fn oversized_frame_is_refused_before_allocating() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut r = &buf[..];
        match read_frame(&mut r, MAX_CONTROL_FRAME) {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as usize);
                assert_eq!(max, MAX_CONTROL_FRAME);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn truncated_header_and_payload() {
        let mut r: &[u8] = &[1, 0];
        assert!(matches!(
            read_frame(&mut r, 16),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let mut buf = Vec::new();
        buf.extend_from_slice(&10u32.to_le_bytes());
        buf.extend_from_slice(b"abc");
        let mut r = &buf[..];
        assert!(matches!(
            read_frame(&mut r, 16),
            Err(FrameError::Truncated {
                expected: 10,
                got: 3
            })
        ));
    }

    #[test]
    fn request_wire_format() {
        let frame = RequestFrame {
            id: 7,
            request: Request::Wait(ProcessRef {
                container: "c1".into(),
                exec: None,
            }),
        };
        let json = serde_json::to_string(&frame).unwrap();
        assert_eq!(
            json,
            r#"{"id":7,"request":{"type":"wait","container":"c1"}}"#
        );
        assert_eq!(decode_request(json.as_bytes()).unwrap(), frame);
        let ping = decode_request(br#"{"id":1,"request":{"type":"ping"}}"#).unwrap();
        assert_eq!(ping.request, Request::Ping);
    }

    #[test]
    fn response_wire_format() {
        let ok = ResponseFrame {
            id: 3,
            outcome: Outcome::Ok(Response::Exited(ExitStatus::signaled(9))),
        };
        let json = serde_json::to_string(&ok).unwrap();
        assert_eq!(
            json,
            r#"{"id":3,"ok":{"type":"exited","code":137,"signal":9}}"#
        );
        assert_eq!(serde_json::from_str::<ResponseFrame>(&json).unwrap(), ok);
        let err = ResponseFrame {
            id: 4,
            outcome: Outcome::Error(WireError::new(
                ErrorCode::NotFound,
                "container c9: not found",
            )),
        };
        let json = serde_json::to_string(&err).unwrap();
        assert_eq!(
            json,
            r#"{"id":4,"error":{"code":"not_found","message":"container c9: not found"}}"#
        );
        assert_eq!(serde_json::from_str::<ResponseFrame>(&json).unwrap(), err);
    }

    #[test]
    fn unknown_request_type_keeps_the_id() {
        let (id, err) =
            decode_request(br#"{"id":42,"request":{"type":"format_disk"}}"#).unwrap_err();
        assert_eq!(id, 42);
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("format_disk"), "{}", err.message);
    }

    #[test]
    fn malformed_json_gets_id_zero() {
        let (id, err) = decode_request(b"{not json").unwrap_err();
        assert_eq!(id, 0);
        assert_eq!(err.code, ErrorCode::BadRequest);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let (id, _) =
            decode_request(br#"{"id":5,"request":{"type":"ping"},"extra":1}"#).unwrap_err();
        assert_eq!(id, 5);
        assert!(
            decode_request(br#"{"id":6,"request":{"type":"wait","container":"c","pid":3}}"#)
                .is_err()
        );
    }

    #[test]
    fn unknown_error_code_from_a_newer_peer() {
        let e: WireError =
            serde_json::from_str(r#"{"code":"quota_exceeded","message":"m"}"#).unwrap();
        assert_eq!(e.code, ErrorCode::Unknown);
    }

    #[test]
    fn hello_wire_format() {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            channel: Channel::Stream {
                container: "c1".into(),
                exec: Some("e1".into()),
                stream: StreamKind::Stderr,
            },
        };
        let json = serde_json::to_string(&hello).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"channel":{"kind":"stream","container":"c1","exec":"e1","stream":"stderr"}}"#
        );
        let control: Hello =
            serde_json::from_str(r#"{"version":1,"channel":{"kind":"control"}}"#).unwrap();
        assert_eq!(control.channel, Channel::Control);
    }

    #[test]
    fn ids() {
        assert!(validate_id("container", "web-1_a.b+c").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(validate_id("container", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn write_json_refuses_oversized_messages() {
        let big = "x".repeat(MAX_CONTROL_FRAME + 1);
        let mut sink = Vec::new();
        assert!(write_json(&mut sink, &big).is_err());
        assert!(sink.is_empty());
    }
}
