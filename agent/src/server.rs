//! The agent's server: accepts connections, runs the handshake, serves control channels
//! (one thread per request, so `wait` blocks only itself) and stream channels, and
//! decides when the agent should stop (a `shutdown` request, or a one-shot VM whose
//! last container is done). It owns connection limits and error replies; it must not
//! touch containers except through the [`Manager`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::conn::{Conn, Listener};
use crate::container::{AgentError, Manager, Mode};
use crate::protocol::{
    decode_request, read_frame, write_json, Channel, ErrorCode, FrameError, Hello, HelloReply,
    Outcome, Request, RequestFrame, Response, ResponseFrame, WireError, MAX_CONTROL_FRAME,
    PROTOCOL_VERSION,
};
use crate::util::lock;

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Requests in flight on one control connection; more get a `busy` error.
pub const MAX_IN_FLIGHT: usize = 64;
/// The handshake must arrive within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// After the decision to stop, how long to wait for the host to close its connections
/// (so the last replies leave the guest before power-off).
pub const LINGER: Duration = Duration::from_secs(2);

/// Why [`Server::serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A `shutdown` request.
    Shutdown,
    /// One-shot VM: the last container is done.
    OneshotDone,
    /// The listener failed.
    ListenerFailed,
}

/// Serves the agent protocol for one [`Manager`].
#[derive(Debug)]
pub struct Server {
    manager: Arc<Manager>,
    connections: AtomicUsize,
    shutdown: AtomicBool,
    listener_failed: AtomicBool,
}

struct ConnGuard<'a>(&'a AtomicUsize);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    pub fn new(manager: Arc<Manager>) -> Arc<Self> {
        Arc::new(Self {
            manager,
            connections: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            listener_failed: AtomicBool::new(false),
        })
    }

    /// Accepts connections until the agent should stop, then lingers briefly for the
    /// host to close its connections.
    pub fn serve(self: &Arc<Self>, listener: Listener) -> Stop {
        let me = self.clone();
        let accept = std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || me.accept_loop(listener));
        if let Err(e) = accept {
            tracing::error!("start accept thread: {e}");
            return Stop::ListenerFailed;
        }
        let stop = loop {
            if self.shutdown.load(Ordering::SeqCst) {
                break Stop::Shutdown;
            }
            if self.listener_failed.load(Ordering::SeqCst) {
                break Stop::ListenerFailed;
            }
            if self.manager.oneshot_done() {
                tracing::info!("one-shot: the last container is done");
                break Stop::OneshotDone;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let deadline = Instant::now() + LINGER;
        while self.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop
    }

    fn accept_loop(self: Arc<Self>, listener: Listener) {
        let mut failures = 0u32;
        loop {
            let conn = match listener.accept() {
                Ok(c) => {
                    failures = 0;
                    c
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!("accept: {e}");
                    if failures > 100 {
                        self.listener_failed.store(true, Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if self.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                self.connections.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("refusing a connection: {MAX_CONNECTIONS} already open");
                let _ = reject(
                    &conn,
                    WireError::new(ErrorCode::Busy, "too many connections"),
                );
                continue;
            }
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("conn".into())
                .spawn(move || {
                    let _guard = ConnGuard(&me.connections);
                    if catch_unwind(AssertUnwindSafe(|| me.handle(conn))).is_err() {
                        tracing::error!("a connection handler panicked; the agent keeps serving");
                    }
                });
            if let Err(e) = spawned {
                self.connections.fetch_sub(1, Ordering::SeqCst);
                tracing::error!("start connection thread: {e}");
            }
        }
    }

    fn handle(self: &Arc<Self>, conn: Conn) {
        let _ = conn.set_read_timeout(Some(HELLO_TIMEOUT));
        let hello = match read_frame(&mut &conn, MAX_CONTROL_FRAME) {
            Ok(Some(payload)) => match serde_json::from_slice::<Hello>(&payload) {
                Ok(h) => h,
                Err(e) => {
                    let _ = reject(
                        &conn,
                        WireError::new(ErrorCode::BadRequest, format!("decode hello: {e}")),
                    );
                    return;
                }
            },
            Ok(None) => return,
            Err(e) => {
                let _ = reject(&conn, WireError::new(ErrorCode::BadRequest, e.to_string()));
                return;
            }
        };
        if hello.version != PROTOCOL_VERSION {
            let _ = reject(
                &conn,
                WireError::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "protocol version {} is not supported; this agent speaks {PROTOCOL_VERSION}",
                        hello.version
                    ),
                ),
            );
            return;
        }
        let _ = conn.set_read_timeout(None);
        match hello.channel {
            Channel::Control => {
                if accept_hello(&conn).is_ok() {
                    self.control_loop(conn);
                }
            }
            Channel::Stream {
                container,
                exec,
                stream,
            } => {
                let process = match self
                    .manager
                    .check_stream(&container, exec.as_deref(), stream)
                {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = reject(&conn, e.into());
                        return;
                    }
                };
                if accept_hello(&conn).is_err() {
                    return;
                }
                let mut conn = conn;
                self.manager.pump_stream(&process, stream, &mut conn);
                let _ = conn.shutdown_write();
            }
        }
    }

    fn control_loop(self: &Arc<Self>, conn: Conn) {
        let writer = match conn.try_clone() {
            Ok(w) => Arc::new(Mutex::new(w)),
            Err(e) => {
                tracing::warn!("control connection: {e}");
                return;
            }
        };
        let in_flight = Arc::new(AtomicUsize::new(0));
        loop {
            let payload = match read_frame(&mut &conn, MAX_CONTROL_FRAME) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e @ FrameError::TooLarge { .. }) => {
                    // The stream cannot be resynchronised after an oversized header.
                    reply(
                        &writer,
                        0,
                        Outcome::Error(WireError::new(
                            ErrorCode::BadRequest,
                            format!("{e}; closing the connection"),
                        )),
                    );
                    break;
                }
                Err(e) => {
                    tracing::debug!("control connection: {e}");
                    break;
                }
            };
            let frame = match decode_request(&payload) {
                Ok(f) => f,
                Err((id, e)) => {
                    tracing::warn!("bad request: {}", e.message);
                    reply(&writer, id, Outcome::Error(e));
                    continue;
                }
            };
            if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                reply(
                    &writer,
                    frame.id,
                    Outcome::Error(WireError::new(
                        ErrorCode::Busy,
                        format!("{MAX_IN_FLIGHT} requests already in flight on this connection"),
                    )),
                );
                continue;
            }
            let (me, w, n) = (self.clone(), writer.clone(), in_flight.clone());
            let spawned = std::thread::Builder::new()
                .name("request".into())
                .spawn(move || {
                    let RequestFrame { id, request } = frame;
                    let name = request.name();
                    let outcome = match catch_unwind(AssertUnwindSafe(|| me.dispatch(request))) {
                        Ok(Ok(r)) => Outcome::Ok(r),
                        Ok(Err(e)) => {
                            tracing::info!("{name}: {e}");
                            Outcome::Error(e.into())
                        }
                        Err(_) => Outcome::Error(WireError::new(
                            ErrorCode::Internal,
                            format!("{name}: the agent hit a bug (panic, see its log) and keeps serving"),
                        )),
                    };
                    reply(&w, id, outcome);
                    n.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                tracing::error!("start request thread: {e}");
            }
        }
    }

    fn dispatch(&self, request: Request) -> Result<Response, AgentError> {
        let m = &self.manager;
        match request {
            Request::Ping => Ok(Response::Pong {
                agent: env!("CARGO_PKG_VERSION").to_owned(),
                version: PROTOCOL_VERSION,
            }),
            Request::Configure(cfg) => {
                if let Some(on) = cfg.oneshot {
                    m.set_oneshot(on);
                }
                for share in &cfg.shares {
                    if m.mode() == Mode::Host {
                        return Err(AgentError::new(
                            ErrorCode::NotSupported,
                            format!(
                                "mount share {}: virtio-fs does not exist in host mode",
                                share.tag
                            ),
                        ));
                    }
                    crate::init::mount_share(m.sys(), share).map_err(|e| {
                        let code = match e {
                            crate::init::ShareError::Invalid { .. } => ErrorCode::BadRequest,
                            crate::init::ShareError::Mount { .. } => ErrorCode::Internal,
                        };
                        AgentError::new(code, e.to_string())
                    })?;
                }
                Ok(Response::Configured)
            }
            Request::Create(req) => m.create(*req),
            Request::Start { container } => m.start(&container),
            Request::Exec(req) => m.exec(*req),
            Request::Signal(req) => m.signal(&req),
            Request::Wait(r) => m.wait(&r),
            Request::ResizeTty(r) => m.resize(&r),
            Request::CloseStdin(r) => m.close_stdin(&r),
            Request::Stats { container } => m.stats(&container),
            Request::Delete { container, force } => m.delete(&container, force),
            Request::Shutdown => {
                m.shutdown();
                self.shutdown.store(true, Ordering::SeqCst);
                Ok(Response::ShuttingDown)
            }
        }
    }
}

fn reply(writer: &Mutex<Conn>, id: u64, outcome: Outcome) {
    let frame = ResponseFrame { id, outcome };
    let w = lock(writer);
    if let Err(e) = write_json(&mut &*w, &frame) {
        tracing::debug!("reply to request {id}: {e}");
    }
}

fn accept_hello(conn: &Conn) -> std::io::Result<()> {
    write_json(
        &mut &*conn,
        &HelloReply {
            version: PROTOCOL_VERSION,
            agent: env!("CARGO_PKG_VERSION").to_owned(),
            error: None,
        },
    )
}

fn reject(conn: &Conn, error: WireError) -> std::io::Result<()> {
    let r = write_json(
        &mut &*conn,
        &HelloReply {
            version: PROTOCOL_VERSION,
            agent: env!("CARGO_PKG_VERSION").to_owned(),
            error: Some(error),
        },
    );
    let _ = conn.shutdown_write();
    r
}
