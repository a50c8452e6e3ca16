//! virtio-vsock (virtio 1.x §5.10) with Firecracker-style hybrid vsock: guest
//! stream sockets are mapped onto Unix sockets on the host.
//!
//! - Host → guest: a client connects to `uds_path`, writes `CONNECT <port>\n`, and
//!   once the guest accepted reads `OK <hostport>\n`; then bytes flow both ways.
//!   A guest refusal (`RST`), a bad request line (not `CONNECT <decimal u32>`, or
//!   over 64 bytes) or no line within 2 s closes the client; a guest that does
//!   not answer the `REQUEST` within 2 s gets a `RST` and the client is closed.
//!   Host ports (`<hostport>`) are handed out from 2^30 up.
//! - Guest → host: a guest connect to CID 2 port P connects (without blocking)
//!   to `<uds_path>_P`; no listener there means `RST`.
//! - Closing: a host EOF becomes `SHUTDOWN(SEND)` after the last byte; a guest
//!   `SHUTDOWN(SEND)` becomes `shutdown(SHUT_WR)` on the host socket after the
//!   last buffered byte. When a guest packet finishes the second direction,
//!   the device answers `RST` and forgets the connection; when the host side
//!   finishes it, the device's last `SHUTDOWN` waits for the guest's `RST`, and
//!   after 10 s sends one itself. Bytes the guest sent before a `RST` still
//!   reach the host, for up to 30 s.
//! - Limits: 256 KiB buffer per connection (the `buf_alloc` the guest sees,
//!   allocated only while the host socket lags), 512 connections, 128 clients
//!   in their handshake, 1024 queued `RST`s.
//!
//! This module owns the device as the transport sees it (features, config space,
//! activation, reset) and the listening socket, bound at construction. It must not
//! touch the transport's registers or KVM. Layout:
//! `packet.rs` (wire format, chain validation), `csm.rs` (one connection),
//! `muxer.rs` (host sockets, routing), `worker.rs` (the queue thread),
//! `handshake.rs`, `txbuf.rs`, `ratelimit.rs`, `metrics.rs`.

mod csm;
mod handshake;
mod metrics;
mod muxer;
mod packet;
mod ratelimit;
mod txbuf;
mod worker;

#[cfg(test)]
mod tests;

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

pub use metrics::VsockMetrics;

use super::{read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};

/// `VIRTIO_ID_VSOCK`.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// Longest `sun_path`, NUL excluded.
const MAX_SOCKET_PATH: usize = 107;

/// What the builder passes to [`Vsock::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID, `3..=0xffff_fffe`.
    pub guest_cid: u64,
    /// Where host clients connect; guest connects to port P go to
    /// `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Limits and timeouts; fixed in production, shortened by tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tunables {
    /// Per-connection buffer for guest → host bytes, advertised as `buf_alloc`.
    pub conn_buf_size: u32,
    /// Send `CREDIT_UPDATE` once the host drained this many bytes since the
    /// guest last heard our `fwd_cnt`.
    pub credit_update_threshold: u32,
    /// A host client must send its `CONNECT` line within this.
    pub handshake_timeout: Duration,
    /// The guest must answer a `REQUEST` within this.
    pub connect_timeout: Duration,
    /// After the host side closed, the guest must answer our `SHUTDOWN` within this.
    pub close_timeout: Duration,
    /// After a guest `RST`, buffered bytes get this long to reach the host.
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub max_handshakes: usize,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            conn_buf_size: 256 * 1024,
            credit_update_threshold: 64 * 1024,
            handshake_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            close_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_connections: 512,
            max_handshakes: 128,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("create vsock device: guest cid {0} is reserved or out of range (3..=4294967294)")]
    InvalidCid(u64),
    #[error("bind vsock socket {path}: path longer than {MAX_SOCKET_PATH} bytes")]
    PathTooLong { path: PathBuf },
    #[error("bind vsock socket {path}: another process listens on it")]
    InUse { path: PathBuf },
    #[error("bind vsock socket {path}: a file that is not a socket is in the way")]
    NotASocket { path: PathBuf },
    #[error("bind vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug)]
struct RunningWorker {
    stop: EventFd,
    thread: JoinHandle<()>,
}

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    config: VsockConfig,
    tun: Tunables,
    listener: UnixListener,
    /// (device, inode) of the socket file we bound, to remove only our own.
    socket_id: (u64, u64),
    config_space: [u8; 8],
    worker: Option<RunningWorker>,
    metrics: Arc<VsockMetrics>,
    log: ratelimit::LogLimiter,
}

impl Vsock {
    /// Checks the CID and binds the listening socket at `uds_path`. A stale
    /// socket file (nobody listening) is replaced; a live one is an error.
    pub fn new(config: VsockConfig) -> Result<Vsock, VsockError> {
        Self::with_tunables(config, Tunables::default())
    }

    pub(crate) fn with_tunables(config: VsockConfig, tun: Tunables) -> Result<Vsock, VsockError> {
        if !(3..=packet::MAX_GUEST_CID).contains(&config.guest_cid) {
            return Err(VsockError::InvalidCid(config.guest_cid));
        }
        let listener = bind_listener(&config.uds_path)?;
        let meta =
            std::fs::symlink_metadata(&config.uds_path).map_err(|source| VsockError::Bind {
                path: config.uds_path.clone(),
                source,
            })?;
        Ok(Vsock {
            config_space: config.guest_cid.to_le_bytes(),
            socket_id: (meta.dev(), meta.ino()),
            config,
            tun,
            listener,
            worker: None,
            metrics: Arc::new(VsockMetrics::default()),
            log: ratelimit::LogLimiter::new(5, Duration::from_secs(1)),
        })
    }

    pub fn config(&self) -> &VsockConfig {
        &self.config
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        Arc::clone(&self.metrics)
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            if let Err(e) = w.stop.write(1) {
                tracing::error!(device = "vsock", error = %e, "signal worker to stop");
            }
            if w.thread.join().is_err() {
                tracing::error!(device = "vsock", "worker thread panicked");
            }
        }
    }

    fn start_worker(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let io_err = |source| ActivateError::Io {
            device: "vsock",
            source,
        };
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err)?;
        let worker = self.build_worker(ctx, stop.try_clone().map_err(io_err)?)?;
        let thread = worker.spawn().map_err(io_err)?;
        self.worker = Some(RunningWorker { stop, thread });
        Ok(())
    }

    /// Builds the worker (and its muxer) that will own the queues; `stop` ends
    /// its loop.
    fn build_worker(
        &self,
        ctx: ActivateContext,
        stop: EventFd,
    ) -> Result<worker::Worker, ActivateError> {
        let io_err = |source| ActivateError::Io {
            device: "vsock",
            source,
        };
        let listener = self.listener.try_clone().map_err(io_err)?;
        let muxer = muxer::Muxer::new(
            self.config.guest_cid,
            self.config.uds_path.clone(),
            listener,
            self.tun,
            Arc::clone(&self.metrics),
        )
        .map_err(io_err)?;
        let mut queues = ctx.queues.into_iter();
        let (Some(rx), Some(tx), Some(ev)) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount {
                device: "vsock",
                expected: 3,
                got: 0,
            });
        };
        worker::Worker::new(
            ctx.mem,
            (rx.queue, rx.notify),
            (tx.queue, tx.notify),
            ev.notify,
            ctx.interrupt,
            stop,
            muxer,
        )
        .map_err(io_err)
    }

    /// Fuzzing entry point: runs the activation checks, then a worker on the
    /// calling thread. Each round does what the worker loop does after a wake-up
    /// (tx chains to the muxer, host socket events, timers, rx buffers, used
    /// tx chains back); between rounds `between(round)` may change guest
    /// memory and returns whether to go on. No thread, so the guest side of a
    /// run is deterministic.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn serve_rounds(
        &self,
        ctx: ActivateContext,
        mut between: impl FnMut(usize) -> bool,
    ) -> Result<(), ActivateError> {
        self.check_activation(&ctx)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| ActivateError::Io {
            device: "vsock",
            source,
        })?;
        let mut w = self.build_worker(ctx, stop)?;
        let mut round = 0;
        loop {
            if let Err(e) = w.round() {
                tracing::debug!(device = "vsock", error = %e, "device failed");
                return Ok(());
            }
            if !between(round) {
                return Ok(());
            }
            round += 1;
        }
    }

    /// What `activate` checks before it starts a worker.
    fn check_activation(&self, ctx: &ActivateContext) -> Result<(), ActivateError> {
        super::check_queues("vsock", &ctx.queues, &ctx.mem, QUEUE_SIZES.len())?;
        if ctx.acked_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(ActivateError::Other {
                device: "vsock",
                reason: "driver did not accept VIRTIO_F_VERSION_1".into(),
            });
        }
        Ok(())
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &'static str {
        "vsock"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        // Stream sockets only: VIRTIO_VSOCK_F_SEQPACKET is not offered.
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The guest's CID is read-only; a guest writing it repeatedly must not
        // flood the log.
        if self.log.allow() {
            tracing::warn!(
                device = "vsock",
                offset,
                len = data.len(),
                "guest wrote read-only config space; ignored"
            );
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Other {
                device: "vsock",
                reason: "device is already active".into(),
            });
        }
        self.check_activation(&ctx)?;
        self.start_worker(ctx)
    }

    fn reset(&mut self) -> bool {
        // Every connection goes with the worker; host clients see EOF. The
        // listening socket stays, so clients may connect again.
        self.stop_worker();
        true
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
        // Remove the socket file only if it is still the one we bound.
        if let Ok(meta) = std::fs::symlink_metadata(&self.config.uds_path) {
            if (meta.dev(), meta.ino()) == self.socket_id {
                let _ = std::fs::remove_file(&self.config.uds_path);
            }
        }
    }
}

/// Binds `path`, replacing a stale socket file nobody listens on.
fn bind_listener(path: &std::path::Path) -> Result<UnixListener, VsockError> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(VsockError::PathTooLong {
            path: path.to_owned(),
        });
    }
    let bind_err = |source| VsockError::Bind {
        path: path.to_owned(),
        source,
    };
    match UnixListener::bind(path) {
        Ok(l) => return Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
        Err(e) => return Err(bind_err(e)),
    }
    let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
    if !meta.file_type().is_socket() {
        return Err(VsockError::NotASocket {
            path: path.to_owned(),
        });
    }
    // Non-blocking: a live listener with a full backlog answers EAGAIN.
    match muxer::connect_nonblocking(path) {
        Ok(_) => Err(VsockError::InUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(VsockError::InUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(device = "vsock", path = %path.display(), "removing stale socket file");
            std::fs::remove_file(path).map_err(bind_err)?;
            UnixListener::bind(path).map_err(bind_err)
        }
        Err(e) => Err(bind_err(e)),
    }
}
