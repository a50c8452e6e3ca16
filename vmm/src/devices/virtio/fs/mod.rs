//! virtio-fs: host directories served to the guest over FUSE, in-process.
//!
//! This module owns the virtio-fs device (`VIRTIO_ID_FS`): its config space, its
//! queues, the FUSE server behind them and the mount-namespace sandbox the VMM
//! enters before serving any share. It must not touch the MMIO transport, other
//! devices, or anything about containers: which directories are layers and which
//! is the upper layer is the caller's business.
//!
//! # Shape
//! - [`Fs`] is the device: one high-priority queue (index 0, FORGET and
//!   INTERRUPT) and `num_request_queues` request queues, a config space of
//!   `tag[36]` + `num_request_queues` ([`VirtioFsConfigSpace`]), and a worker
//!   thread (`worker.rs`) polling the queue eventfds.
//! - One device serves several mounts ([`FsMount`]): a single mount at `/` is a
//!   plain share; mounts such as `/layers/0` … `/layers/N` and `/upper` put all of
//!   a container's layers behind one device, under a read-only pseudo root. That
//!   matters because virtio-mmio on x86 has only ~18 interrupt lines. This is
//!   fuse-backend-rs's [`Vfs`](fuse_backend_rs::api::Vfs) union file system with
//!   one passthrough backend per mount; it serves `/` too, but `/` must then be
//!   the only mount (validation enforces it, see `config.rs`).
//! - `filesystem.rs` wraps that union with the boundary policy: read-only mounts
//!   answer `EROFS`, link/rename across mounts `EXDEV`, device nodes other than
//!   whiteouts `EPERM`, guest-sized buffers are capped.
//! - [`sandbox::enter`] puts the VMM in a private mount namespace where every
//!   share is bind-mounted `nodev,nosuid,noexec`, and `ro` when read-only: the
//!   kernel enforces read-only a second time, and a device node in a share can
//!   never be opened through it.
//!
//! # Why in-process, not `virtiofsd`
//! fuse-backend-rs serves the FUSE requests inside the VMM, on the device's
//! worker thread, straight from guest memory:
//! - one process per container stays one process: no second daemon to spawn,
//!   supervise, restart and clean up, and no vhost-user socket between them;
//! - no vhost-user: the device is an ordinary virtio device behind our MMIO
//!   transport, so the transport needs no vhost-user backend and no shared
//!   memory file for guest RAM (virtiofsd needs guest memory in a shareable
//!   `memfd`);
//! - several mounts per device come with the library's `Vfs`; with virtiofsd
//!   each directory is a daemon and a device;
//! - the cost: the FUSE server runs in the VMM's process, so it must be
//!   confined: the mount sandbox here (`sandbox.rs`), and the worker thread's
//!   seccomp filter (`crate::seccomp`, the fs worker list: file calls by fd and
//!   by `openat`, xattrs, the caller's credentials; no exec, no mount, no
//!   sockets); and a bug in the library runs in our address space. Panics in
//!   it are caught per request (`worker.rs`).
//!
//! # Cost, measured
//! Release build on the 2-core build host, requests pipelined through the
//! queue by the test driver (no VM exits or interrupts counted):
//! - a 100-mount device is built in 8–14 ms and holds 3 fds per mount (about
//!   0.6–0.8 MiB RSS for all 100);
//! - GETATTR costs 1.3–1.5 µs per request in the worker;
//! - 1 MiB READs from the host page cache: 0.8–1.1 GiB/s while guest pages are
//!   first touched, 11–13 GiB/s once they are mapped.
//!
//! Passthrough keeps one `O_PATH` fd per inode the guest holds (until FORGET),
//! so the VMM needs an `RLIMIT_NOFILE` well above 1024; a guest that never
//! forgets can exhaust it, which fails its own lookups (`EMFILE`).
//!
//! # Not supported
//! - DAX: the device exposes no shared-memory window, so the guest must not
//!   mount with `dax`; SETUPMAPPING/REMOVEMAPPING answer an error.
//! - `O_TMPFILE` (fuse-backend-rs 0.14 has no FUSE_TMPFILE), POSIX locks over
//!   FUSE (the guest keeps locks local), ioctls, `lseek` with `SEEK_DATA`.
//! - VIRTIO_F_EVENT_IDX and notification suppression: every batch of used
//!   buffers raises an interrupt.
//! - Shares that contain `/proc`, `/dev` or `/sys` (e.g. `-v /:/host`) under the
//!   sandbox.
//! - ID mapping: files are created with the guest's uid/gid, and the guest may
//!   set any xattr (including `security.capability`) and setuid bits in a
//!   read-write share. The host must treat such a directory as hostile (moatd:
//!   never follow its symlinks, never execute from it).

pub mod sandbox;

mod config;
mod filesystem;
mod worker;

#[cfg(test)]
mod host_overlay;
#[cfg(test)]
mod test_client;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use vm_memory::{ByteValued, Le32};

pub use config::{FsConfig, FsConfigError, FsMount, MAX_MOUNTS, MAX_REQUEST_QUEUES, MAX_TAG_LEN};

use super::{read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};
use config::ValidConfig;
use filesystem::ShareFs;
use worker::{FsServer, Worker, WorkerHandle};

/// Size of every queue. A 1 MiB request without indirect descriptors takes
/// ~260 descriptors; 1024 leaves room for several in flight.
pub const QUEUE_SIZE: u16 = 1024;

const DEVICE_NAME: &str = "virtio-fs";

/// Why a virtio-fs device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Config(#[from] FsConfigError),
    #[error("virtio-fs {tag}: open share {} for {guest_path}: {source}", host_dir.display())]
    Share {
        tag: String,
        guest_path: String,
        host_dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("virtio-fs {tag}: mount share at {guest_path}: {reason}")]
    Mount {
        tag: String,
        guest_path: String,
        reason: String,
    },
    #[error("virtio-fs {tag}: set up the file server thread: {source}")]
    Thread {
        tag: String,
        #[source]
        source: std::io::Error,
    },
}

/// The device configuration space (virtio 1.2 §5.11.4), as the guest reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VirtioFsConfigSpace {
    /// The tag, NUL-padded, not necessarily NUL-terminated.
    pub tag: [u8; MAX_TAG_LEN],
    /// Number of request queues (the high-priority queue is not counted).
    pub num_request_queues: Le32,
}

// SAFETY: `VirtioFsConfigSpace` is `repr(C)`, made of a byte array and a `Le32`
// with no padding between or after them (checked by `config_space_layout`), so
// every byte pattern is a valid value.
unsafe impl ByteValued for VirtioFsConfigSpace {}

impl VirtioFsConfigSpace {
    fn new(tag: &str, num_request_queues: u16) -> Self {
        let mut cfg = VirtioFsConfigSpace {
            tag: [0; MAX_TAG_LEN],
            num_request_queues: Le32::from(u32::from(num_request_queues)),
        };
        // Validation keeps the tag within MAX_TAG_LEN bytes; `take` is defence.
        for (dst, src) in cfg.tag.iter_mut().zip(tag.bytes().take(MAX_TAG_LEN)) {
            *dst = src;
        }
        cfg
    }
}

/// A virtio-fs device serving one or more host directories under one tag.
pub struct Fs {
    tag: String,
    config_space: VirtioFsConfigSpace,
    queue_sizes: Vec<u16>,
    fs: Arc<ShareFs>,
    server: Arc<FsServer>,
    worker: Option<WorkerHandle>,
    /// Set when the FUSE server panicked; the device then answers EIO and cannot
    /// be reset.
    poisoned: Arc<AtomicBool>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag)
            .field("queues", &self.queue_sizes.len())
            .field("fs", &self.fs)
            .field("active", &self.worker.is_some())
            .field("poisoned", &self.poisoned.load(Ordering::SeqCst))
            .finish()
    }
}

impl Fs {
    /// Validates `config` and opens every mount's host directory. Call
    /// [`sandbox::enter`] before this, so the directories opened are the
    /// sandbox's restricted bind mounts.
    pub fn new(config: FsConfig) -> Result<Fs, FsError> {
        let valid = config.validate()?;
        Fs::from_valid(valid)
    }

    fn from_valid(valid: ValidConfig) -> Result<Fs, FsError> {
        let fs = Arc::new(ShareFs::new(&valid)?);
        let server = Arc::new(Server::new(fs.clone()));
        let queue_count = 1 + usize::from(valid.num_request_queues);
        Ok(Fs {
            config_space: VirtioFsConfigSpace::new(&valid.tag, valid.num_request_queues),
            tag: valid.tag,
            queue_sizes: vec![QUEUE_SIZE; queue_count],
            fs,
            server,
            worker: None,
            poisoned: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The tag the guest mounts.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Checks the activation context and builds the worker that will own the
    /// queues.
    fn build_worker(&self, ctx: ActivateContext) -> Result<Worker, ActivateError> {
        super::check_queues(DEVICE_NAME, &ctx.queues, &ctx.mem, self.queue_sizes.len())?;
        Worker::new(
            self.tag.clone(),
            self.server.clone(),
            self.fs.clone(),
            ctx.mem,
            ctx.queues,
            ctx.interrupt,
            self.poisoned.clone(),
        )
        .map_err(|source| ActivateError::Io {
            device: DEVICE_NAME,
            source,
        })
    }

    /// Fuzzing entry point: runs the activation checks, then a worker on a
    /// scoped thread with its own umask, like the worker thread's. Each round
    /// serves every queue once (what the worker does on notifications); between
    /// rounds `between(round)` may read replies and add requests, and returns
    /// whether to go on. At the end the FUSE session ends as on a reset. The
    /// caller continues once it is all done, so a run is deterministic.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn serve_rounds(
        &self,
        ctx: ActivateContext,
        between: impl FnMut(usize) -> bool + Send,
    ) -> Result<(), ActivateError> {
        let worker = self.build_worker(ctx)?;
        // `MOAT_FUZZ_SECCOMP` set: the scoped worker thread runs under the fs
        // worker's seccomp filter, as the real worker does, so a FUSE request
        // that needs a syscall outside the list ends the fuzzer through the
        // SIGSYS report (`make fuzz` and `make fuzz-regress` set it).
        let filters =
            match std::env::var_os("MOAT_FUZZ_SECCOMP") {
                Some(_) => Some(crate::seccomp::Filters::compile(libc::SIGRTMIN()).map_err(
                    |e| ActivateError::Other {
                        device: DEVICE_NAME,
                        reason: e.to_string(),
                    },
                )?),
                None => None,
            };
        filesystem::run_with_private_umask(move || {
            crate::seccomp::install_if(
                filters.as_deref(),
                crate::seccomp::ThreadKind::Worker(crate::seccomp::WorkerKind::Fs),
            )
            .map_err(|e| ActivateError::Other {
                device: DEVICE_NAME,
                reason: e.to_string(),
            })?;
            worker.serve_rounds(between);
            Ok(())
        })
        .map_err(|source| ActivateError::Io {
            device: DEVICE_NAME,
            source,
        })?
    }

    fn stop_worker(&mut self) -> bool {
        match self.worker.take() {
            Some(w) => w.stop(),
            None => true,
        }
    }
}

impl VirtioDevice for Fs {
    fn name(&self) -> &'static str {
        DEVICE_NAME
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(self.config_space.as_slice(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Other {
                device: DEVICE_NAME,
                reason: format!("{}: already active", self.tag),
            });
        }
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(ActivateError::Other {
                device: DEVICE_NAME,
                reason: format!("{}: file server failed earlier", self.tag),
            });
        }
        let worker = self
            .build_worker(ctx)?
            .spawn()
            .map_err(|source| ActivateError::Io {
                device: DEVICE_NAME,
                source,
            })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let stopped = self.stop_worker();
        stopped && !self.poisoned.load(Ordering::SeqCst)
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        if !self.stop_worker() {
            tracing::error!(tag = %self.tag, "virtio-fs: worker thread panicked");
        }
    }
}
