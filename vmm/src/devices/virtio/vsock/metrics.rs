//! Counters of one vsock device, shared between its worker (which writes them)
//! and whoever watches the VM (which reads them).
//!
//! Owns: the counters only. It must not hold references to connections or
//! queues.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct VsockMetrics {
    connections: AtomicU64,
    buffered_bytes: AtomicU64,
    held_chains: AtomicU64,
    bad_packets: AtomicU64,
    rst_sent: AtomicU64,
    handshakes_refused: AtomicU64,
}

impl VsockMetrics {
    /// Open connections (any state but a pending handshake).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// Guest bytes buffered for host sockets, over all connections.
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered_bytes.load(Ordering::Relaxed)
    }
    /// Tx chains held back because a host socket could not take their data.
    pub fn held_chains(&self) -> u64 {
        self.held_chains.load(Ordering::Relaxed)
    }
    /// Guest packets dropped or answered with `RST` because they were malformed
    /// or not valid in their connection's state.
    pub fn bad_packets(&self) -> u64 {
        self.bad_packets.load(Ordering::Relaxed)
    }
    /// `RST` packets sent to the guest.
    pub fn rst_sent(&self) -> u64 {
        self.rst_sent.load(Ordering::Relaxed)
    }
    /// Host clients closed during the handshake (bad line, timeout, limits).
    pub fn handshakes_refused(&self) -> u64 {
        self.handshakes_refused.load(Ordering::Relaxed)
    }

    pub(super) fn add_connections(&self, delta: i64) {
        add(&self.connections, delta);
    }
    pub(super) fn add_buffered(&self, delta: i64) {
        add(&self.buffered_bytes, delta);
    }
    pub(super) fn add_held(&self, delta: i64) {
        add(&self.held_chains, delta);
    }
    pub(super) fn inc_bad_packets(&self) {
        self.bad_packets.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn inc_rst_sent(&self) {
        self.rst_sent.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn inc_handshakes_refused(&self) {
        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
    }
}

fn add(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
    } else {
        counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}
