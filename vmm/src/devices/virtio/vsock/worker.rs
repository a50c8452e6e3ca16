//! The worker thread of one active vsock device: it polls the rx, tx and event
//! queue eventfds, the muxer's epoll fd and a stop eventfd, moves tx chains into
//! the muxer and fills rx buffers from it, and returns used buffers to the guest
//! with an interrupt.
//!
//! Owns: the three virtqueues while the device is active. It must not touch host
//! sockets (the muxer does) or parse packets (packet.rs does). A broken ring
//! (the guest made the queue itself unusable) stops the worker: the device fails,
//! the VMM does not.

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::Muxer;
use super::packet::{RxBuffer, TxPacket};
use super::ratelimit::LogLimiter;
use crate::devices::virtio::{GuestMemory, Interrupt};

const TOKEN_STOP: u64 = 0;
const TOKEN_RXQ: u64 = 1;
const TOKEN_TXQ: u64 = 2;
const TOKEN_EVQ: u64 = 3;
const TOKEN_MUXER: u64 = 4;

/// Why the worker stopped serving the guest.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("vsock {queue} queue: {source}")]
    Queue {
        queue: &'static str,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("vsock worker poll: {0}")]
    Poll(#[source] io::Error),
}

#[derive(Debug)]
pub struct Worker {
    mem: GuestMemory,
    rxq: Queue,
    txq: Queue,
    rx_notify: EventFd,
    tx_notify: EventFd,
    ev_notify: EventFd,
    interrupt: Interrupt,
    stop: EventFd,
    muxer: Muxer,
    epoll: Epoll,
    log: LogLimiter,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mem: GuestMemory,
        (rxq, rx_notify): (Queue, EventFd),
        (txq, tx_notify): (Queue, EventFd),
        ev_notify: EventFd,
        interrupt: Interrupt,
        stop: EventFd,
        muxer: Muxer,
    ) -> io::Result<Worker> {
        let epoll = Epoll::new()?;
        for (fd, token) in [
            (stop.as_raw_fd(), TOKEN_STOP),
            (rx_notify.as_raw_fd(), TOKEN_RXQ),
            (tx_notify.as_raw_fd(), TOKEN_TXQ),
            (ev_notify.as_raw_fd(), TOKEN_EVQ),
            (muxer.epoll_fd(), TOKEN_MUXER),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(Worker {
            mem,
            rxq,
            txq,
            rx_notify,
            tx_notify,
            ev_notify,
            interrupt,
            stop,
            muxer,
            epoll,
            log: LogLimiter::new(20, std::time::Duration::from_secs(1)),
        })
    }

    /// Starts the worker thread, confined to the vsock worker filter when
    /// seccomp is on.
    pub fn spawn(self) -> io::Result<JoinHandle<()>> {
        crate::seccomp::spawn_worker(
            "vsock".into(),
            crate::seccomp::WorkerKind::Vsock,
            move || {
                let mut w = self;
                match w.run() {
                    Ok(()) => tracing::debug!(device = "vsock", "worker stopped"),
                    Err(e) => tracing::error!(
                        device = "vsock",
                        error = %e,
                        "device failed; guest vsock connections are closed until the driver resets it"
                    ),
                }
            },
        )
    }

    fn run(&mut self) -> Result<(), WorkerError> {
        let mut events = [EpollEvent::default(); 8];
        // Chains may already be waiting (the driver may have notified before
        // the worker existed).
        self.process_tx()?;
        self.process_rx()?;
        loop {
            let timeout = match self.muxer.next_timeout(Instant::now()) {
                // Round up so the timer is due when epoll returns.
                Some(d) => i32::try_from(d.as_millis().saturating_add(1)).unwrap_or(i32::MAX),
                None => -1,
            };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WorkerError::Poll(e)),
            };
            let mut tx_kick = false;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => {
                        let _ = self.stop.read();
                        return Ok(());
                    }
                    TOKEN_RXQ => {
                        let _ = self.rx_notify.read();
                    }
                    TOKEN_TXQ => {
                        let _ = self.tx_notify.read();
                        tx_kick = true;
                    }
                    TOKEN_EVQ => {
                        // The device sends no events; the guest only parks
                        // buffers there.
                        let _ = self.ev_notify.read();
                    }
                    TOKEN_MUXER => self.muxer.process_host_events(&self.mem),
                    _ => {}
                }
            }
            self.muxer.process_timers(Instant::now());
            if tx_kick {
                self.process_tx()?;
            }
            self.process_rx()?;
            self.return_tx()?;
        }
    }

    /// One round of the loop's work without waiting: tx chains, host socket
    /// events, timers, rx buffers, used tx chains (for the fuzzer).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn round(&mut self) -> Result<(), WorkerError> {
        self.process_tx()?;
        self.muxer.process_host_events(&self.mem);
        self.muxer.process_timers(Instant::now());
        self.process_rx()?;
        self.return_tx()
    }

    /// Hands every available tx chain to the muxer.
    fn process_tx(&mut self) -> Result<(), WorkerError> {
        let mem = &self.mem;
        let iter = self.txq.iter(mem).map_err(|source| WorkerError::Queue {
            queue: "tx",
            source,
        })?;
        for chain in iter {
            self.muxer.handle_tx(TxPacket::parse(mem, chain), mem);
        }
        self.return_tx()
    }

    /// Puts the tx chains the muxer is done with on the used ring.
    fn return_tx(&mut self) -> Result<(), WorkerError> {
        let done = self.muxer.take_completed_tx();
        if done.is_empty() {
            return Ok(());
        }
        for head in done {
            if let Err(e) = self.txq.add_used(&self.mem, head, 0) {
                // A head the guest made up (out of range): nothing to return.
                if self.log.allow() {
                    tracing::warn!(device = "vsock", head, error = %e, "return tx chain to guest");
                }
            }
        }
        self.notify(true)
    }

    /// Fills rx buffers while the muxer has packets for the guest.
    fn process_rx(&mut self) -> Result<(), WorkerError> {
        let mut used = false;
        while self.muxer.has_rx() {
            let chain = self
                .rxq
                .iter(&self.mem)
                .map_err(|source| WorkerError::Queue {
                    queue: "rx",
                    source,
                })?
                .next();
            let Some(chain) = chain else {
                // No buffers: wait for the guest to add some.
                break;
            };
            let (head, len) = match RxBuffer::parse(&self.mem, chain) {
                Ok(buf) => match self.muxer.fill_rx(&buf, &self.mem) {
                    Some(len) => (buf.head(), len),
                    None => {
                        self.rxq.go_to_previous_position();
                        break;
                    }
                },
                Err((head, e)) => {
                    if self.log.allow() {
                        tracing::warn!(device = "vsock", head, error = %e, "unusable rx buffer from guest; dropped");
                    }
                    (head, 0)
                }
            };
            if let Err(e) = self.rxq.add_used(&self.mem, head, len) {
                if self.log.allow() {
                    tracing::warn!(device = "vsock", head, error = %e, "return rx buffer to guest");
                }
            }
            used = true;
        }
        // Completions from rx work (connections killed) go back too.
        self.return_tx()?;
        if used {
            self.notify(false)?;
        }
        Ok(())
    }

    fn notify(&mut self, tx: bool) -> Result<(), WorkerError> {
        let (q, name) = if tx {
            (&mut self.txq, "tx")
        } else {
            (&mut self.rxq, "rx")
        };
        let needed = q
            .needs_notification(&self.mem)
            .map_err(|source| WorkerError::Queue {
                queue: name,
                source,
            })?;
        if needed {
            if let Err(e) = self.interrupt.signal_used_queue() {
                tracing::warn!(device = "vsock", error = %e, "signal guest interrupt");
            }
        }
        Ok(())
    }
}
