//! One vsock stream connection between a guest port and a host Unix socket: its
//! state machine (connect, established, half and full shutdown, reset, close
//! timeouts), credit-based flow control in both directions, and the bounded
//! buffering of guest data the host socket cannot take yet.
//!
//! Owns: the host socket of the connection, its counters and buffers, the tx
//! chains it holds back, and the choice of the next packet it sends to the guest.
//! It must not touch the virtqueues, epoll or any other connection: the muxer
//! drives it and applies the [`Verdict`]s it returns.
//!
//! Flow control, guest → host: the device advertises `buf_alloc` (the capacity of
//! [`TxBuf`]) and `fwd_cnt` (bytes written to the host socket). A guest that
//! respects that credit never overflows the buffer. Data that does not fit (a
//! guest ignoring credit) stays in guest memory: its chain is held, not returned
//! to the guest, until the host socket drains; later packets of the connection
//! queue behind it, so nothing is lost or reordered and memory stays bounded.
//!
//! Flow control, host → guest: the device reads the host socket only while the
//! guest's credit (`buf_alloc - (rx_cnt - fwd_cnt)` from its last header) is
//! positive, and never reads more than that credit; with no credit it sends one
//! `CREDIT_REQUEST` and waits for a `CREDIT_UPDATE`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::{
    op_name, PacketError, RxBuffer, TxPacket, VsockHeader, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE,
    OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND,
};
use super::Tunables;
use crate::devices::virtio::GuestMemory;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: the `REQUEST` is pending or sent, waiting for `RESPONSE`.
    Connecting,
    Established,
    /// Both directions finished by the host side and our last `SHUTDOWN` is out:
    /// waiting for the guest's `RST`, at most `close_timeout`.
    Closing,
    /// The guest reset the connection while bytes for the host were buffered:
    /// only flushing them, at most `drain_timeout`.
    Draining,
}

/// What the muxer must do with the connection after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Remove the connection and close its host socket; send the guest a `RST`
    /// when `rst`.
    Kill {
        rst: bool,
    },
}

/// Result of asking the connection for its next packet to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// A packet of this many bytes (header included) was written.
    Packet(u32),
    /// Nothing to send now.
    Nothing,
    Kill {
        rst: bool,
    },
}

#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    local_port: u32,
    peer_port: u32,
    guest_cid: u64,
    tun: Tunables,
    state: State,
    deadline: Option<Instant>,

    // guest → host
    tx_buf: super::txbuf::TxBuf,
    /// Bytes at the front of `tx_buf` that are not guest data (the `OK` line).
    tx_uncounted: usize,
    /// `RW` and `SHUTDOWN` packets not applied yet, in guest order.
    held: VecDeque<TxPacket>,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    need_credit_update: bool,
    peer_shut_send: bool,
    peer_shut_rcv: bool,
    host_write_shut: bool,
    host_read_shut: bool,
    /// The host socket no longer takes data (peer closed, or write error).
    host_write_broken: bool,

    // host → guest
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    rx_cnt: u32,
    /// The host socket may have data (or EOF) to read.
    host_readable: bool,
    host_eof: bool,
    /// The host hung up: epoll would report it forever, so the socket is no
    /// longer polled; reads go on until EOF.
    host_hup: bool,
    need_request: bool,
    need_response: bool,
    credit_request_sent: bool,
    shutdown_sent: u32,
}

impl Connection {
    fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
        tun: Tunables,
        state: State,
    ) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            guest_cid,
            tx_buf: super::txbuf::TxBuf::new(
                tun.conn_buf_size as usize + super::handshake::MAX_LINE,
            ),
            tun,
            state,
            deadline: None,
            tx_uncounted: 0,
            held: VecDeque::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            need_credit_update: false,
            peer_shut_send: false,
            peer_shut_rcv: false,
            host_write_shut: false,
            host_read_shut: false,
            host_write_broken: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            host_readable: false,
            host_eof: false,
            host_hup: false,
            need_request: false,
            need_response: false,
            credit_request_sent: false,
            shutdown_sent: 0,
        }
    }

    /// A connection a host client asked for with `CONNECT <peer_port>`: the
    /// device sends the guest a `REQUEST` and waits `connect_timeout`.
    pub fn host_initiated(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
        tun: Tunables,
        now: Instant,
    ) -> Self {
        let mut c = Self::new(
            stream,
            local_port,
            peer_port,
            guest_cid,
            tun,
            State::Connecting,
        );
        c.need_request = true;
        c.deadline = Some(now + tun.connect_timeout);
        c
    }

    /// A connection the guest asked for with `REQUEST`, already connected to the
    /// host listener: the device answers `RESPONSE`.
    pub fn guest_initiated(
        stream: UnixStream,
        request: &VsockHeader,
        guest_cid: u64,
        tun: Tunables,
    ) -> Self {
        let mut c = Self::new(
            stream,
            request.dst_port(),
            request.src_port(),
            guest_cid,
            tun,
            State::Established,
        );
        c.peer_buf_alloc = request.buf_alloc();
        c.peer_fwd_cnt = request.fwd_cnt();
        c.need_response = true;
        c
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Bytes buffered for the host socket.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Tx chains held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Head indices of the tx chains this connection still holds, handed back
    /// when it is removed.
    pub fn take_held(&mut self) -> impl Iterator<Item = u16> + '_ {
        self.held.drain(..).map(|p| p.head())
    }

    /// The guest's credit for host → guest data.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_read_host(&self) -> bool {
        self.state == State::Established && !self.host_eof && !self.peer_shut_rcv
    }

    fn credit_update_due(&self) -> bool {
        self.state == State::Established
            && !self.peer_shut_send
            && (self.need_credit_update
                || self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent)
                    >= self.tun.credit_update_threshold)
    }

    /// `SHUTDOWN` flags the guest must learn and has not yet.
    fn shutdown_due(&self) -> u32 {
        let mut flags = 0;
        if self.host_eof && !self.peer_shut_rcv {
            flags |= SHUTDOWN_SEND;
        }
        if self.host_write_broken && !self.peer_shut_send {
            flags |= SHUTDOWN_RCV;
        }
        flags & !self.shutdown_sent
    }

    /// Whether the connection has a packet for the guest.
    pub fn wants_rx(&self) -> bool {
        match self.state {
            State::Connecting => self.need_request,
            State::Established => {
                self.need_response
                    || self.credit_update_due()
                    || self.shutdown_due() != 0
                    || (self.host_readable
                        && self.can_read_host()
                        && (self.peer_credit() > 0 || !self.credit_request_sent))
            }
            State::Closing | State::Draining => false,
        }
    }

    /// The epoll events to wait for on the host socket; `None` once the socket
    /// must not be polled any more (it hung up).
    pub fn interest(&self) -> Option<EventSet> {
        if self.host_hup {
            return None;
        }
        let mut ev = EventSet::empty();
        if self.can_read_host() && !self.host_readable {
            ev |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() && !self.host_write_broken {
            ev |= EventSet::OUT;
        }
        Some(ev)
    }

    fn header(&self, op: u16) -> VsockHeader {
        VsockHeader::to_guest(self.guest_cid, self.local_port, self.peer_port, op)
            .with_credit(self.tun.conn_buf_size, self.fwd_cnt)
    }

    /// A packet from the guest for this connection (header already checked
    /// against the device's rules). The packet's chain is either completed into
    /// `completed` or held by the connection.
    pub fn on_guest_packet(
        &mut self,
        pkt: TxPacket,
        mem: &GuestMemory,
        scratch: &mut [u8],
        completed: &mut Vec<u16>,
    ) -> Verdict {
        let hdr = *pkt.hdr();
        // Every header carries the guest's current receive credit.
        self.peer_buf_alloc = hdr.buf_alloc();
        self.peer_fwd_cnt = hdr.fwd_cnt();
        if self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }
        let op = hdr.op();
        match (self.state, op) {
            (State::Connecting, OP_RESPONSE) => {
                completed.push(pkt.head());
                self.state = State::Established;
                self.deadline = None;
                self.send_ok_line()
            }
            (State::Connecting, OP_RST) => {
                completed.push(pkt.head());
                Verdict::Kill { rst: false }
            }
            (State::Established, OP_RW | OP_SHUTDOWN) => {
                self.held.push_back(pkt);
                self.pump(mem, scratch, completed)
            }
            (State::Established, OP_CREDIT_UPDATE) => {
                completed.push(pkt.head());
                Verdict::Keep
            }
            (State::Established, OP_CREDIT_REQUEST) => {
                completed.push(pkt.head());
                self.need_credit_update = true;
                Verdict::Keep
            }
            (State::Established, OP_RST) => {
                completed.push(pkt.head());
                if self.host_write_broken || (self.tx_buf.is_empty() && self.held.is_empty()) {
                    Verdict::Kill { rst: false }
                } else {
                    // Keep what the guest sent before the reset flowing to the host.
                    self.state = State::Draining;
                    self.deadline = Some(Instant::now() + self.tun.drain_timeout);
                    self.pump(mem, scratch, completed)
                }
            }
            (State::Closing, OP_RST) => {
                completed.push(pkt.head());
                Verdict::Kill { rst: false }
            }
            (State::Closing, OP_SHUTDOWN) => {
                completed.push(pkt.head());
                Verdict::Kill { rst: true }
            }
            // The host side is gone (Closing) or the guest reset the connection
            // (Draining): stray data and credit packets are dropped.
            (State::Closing, OP_RW | OP_CREDIT_UPDATE | OP_CREDIT_REQUEST)
            | (State::Draining, _) => {
                completed.push(pkt.head());
                Verdict::Keep
            }
            (state, op) => {
                completed.push(pkt.head());
                tracing::debug!(
                    device = "vsock",
                    local_port = self.local_port,
                    peer_port = self.peer_port,
                    ?state,
                    op = op_name(op),
                    "guest packet not valid in this connection state; resetting"
                );
                Verdict::Kill { rst: true }
            }
        }
    }

    /// Tells the host client the connection is up: `OK <hostport>\n`, ahead of
    /// any guest data.
    fn send_ok_line(&mut self) -> Verdict {
        let line = format!("OK {}\n", self.local_port);
        let written = match (&self.stream).write(line.as_bytes()) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return Verdict::Kill { rst: true },
        };
        let rest = &line.as_bytes()[written..];
        // The buffer is empty and larger than a handshake line.
        self.tx_uncounted = self.tx_buf.push(rest);
        Verdict::Keep
    }

    /// Events on the host socket.
    pub fn on_host_event(
        &mut self,
        events: EventSet,
        mem: &GuestMemory,
        scratch: &mut [u8],
        completed: &mut Vec<u16>,
    ) -> Verdict {
        if events.contains(EventSet::ERROR) {
            return Verdict::Kill {
                rst: self.state != State::Draining,
            };
        }
        if events.contains(EventSet::HANG_UP) {
            self.host_hup = true;
            match self.state {
                State::Connecting => return Verdict::Kill { rst: true },
                State::Draining => return Verdict::Kill { rst: false },
                State::Established | State::Closing => {}
            }
            // Read what the host wrote before closing, up to EOF.
            self.host_readable = true;
            if !self.host_write_shut {
                self.mark_write_broken();
            }
        }
        if events.contains(EventSet::IN) {
            self.host_readable = true;
        }
        self.pump(mem, scratch, completed)
    }

    fn mark_write_broken(&mut self) {
        self.host_write_broken = true;
        self.tx_buf.clear();
        self.tx_uncounted = 0;
    }

    /// Writes buffered bytes to the host socket.
    fn flush(&mut self) {
        if self.tx_buf.is_empty() || self.host_write_broken {
            return;
        }
        let before = self.tx_buf.len();
        let res = self.tx_buf.flush_to(&mut &self.stream);
        let written = before - self.tx_buf.len();
        let uncounted = written.min(self.tx_uncounted);
        self.tx_uncounted -= uncounted;
        self.count_forwarded(written - uncounted);
        if res.is_err() {
            self.mark_write_broken();
        }
    }

    fn count_forwarded(&mut self, n: usize) {
        // Counters are modulo 2^32 on the wire.
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
    }

    /// Moves payload of `pkt` towards the host socket: straight to the socket
    /// while nothing is buffered, else into the buffer as far as it has room.
    /// Returns whether the whole payload was taken.
    fn push_data(
        &mut self,
        pkt: &mut TxPacket,
        mem: &GuestMemory,
        scratch: &mut [u8],
    ) -> Result<bool, PacketError> {
        while pkt.remaining() > 0 {
            if self.host_write_broken {
                // Nobody reads any more; the guest is told with SHUTDOWN(RCV).
                pkt.discard_payload();
                return Ok(true);
            }
            if self.tx_buf.free() == 0 {
                self.flush();
                if self.tx_buf.free() == 0 {
                    return Ok(false);
                }
                continue;
            }
            let direct = self.tx_buf.is_empty();
            // Whatever the socket does not take must fit the buffer, so a
            // chunk is never larger than its free space.
            let limit = scratch.len().min(self.tx_buf.free());
            let n = pkt.read_payload(mem, &mut scratch[..limit])?;
            let mut written = 0;
            if direct {
                match (&self.stream).write(&scratch[..n]) {
                    Ok(w) => written = w,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.mark_write_broken();
                        continue;
                    }
                }
                self.count_forwarded(written);
            }
            let rest = &scratch[written..n];
            let pushed = self.tx_buf.push(rest);
            if pushed < rest.len() {
                // Cannot happen: the chunk is bounded by the free space. Fail
                // the connection rather than lose bytes silently.
                return Err(PacketError::PayloadTooLarge {
                    len: u32::try_from(rest.len()).unwrap_or(u32::MAX),
                });
            }
        }
        Ok(true)
    }

    /// Flushes the buffer, applies held packets in order as far as the host
    /// socket allows, then settles shutdowns and whether the connection is done.
    fn pump(&mut self, mem: &GuestMemory, scratch: &mut [u8], completed: &mut Vec<u16>) -> Verdict {
        loop {
            self.flush();
            let Some(mut front) = self.held.pop_front() else {
                break;
            };
            let hdr = *front.hdr();
            if hdr.op() == OP_RW {
                if self.peer_shut_send && self.state == State::Established {
                    tracing::debug!(
                        device = "vsock",
                        local_port = self.local_port,
                        peer_port = self.peer_port,
                        "guest sent data after SHUTDOWN(SEND); resetting"
                    );
                    completed.push(front.head());
                    return Verdict::Kill { rst: true };
                }
                match self.push_data(&mut front, mem, scratch) {
                    Ok(true) => {}
                    Ok(false) => {
                        // The host socket is full: the rest waits in guest memory.
                        self.held.push_front(front);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(
                            device = "vsock",
                            local_port = self.local_port,
                            peer_port = self.peer_port,
                            error = %e,
                            "copy guest data; resetting connection"
                        );
                        completed.push(front.head());
                        return Verdict::Kill { rst: true };
                    }
                }
            } else {
                // OP_SHUTDOWN: only RW and SHUTDOWN are ever held.
                if hdr.flags() & SHUTDOWN_RCV != 0 {
                    self.peer_shut_rcv = true;
                }
                if hdr.flags() & SHUTDOWN_SEND != 0 {
                    self.peer_shut_send = true;
                }
            }
            completed.push(front.head());
        }
        let g2h_flushed = self.tx_buf.is_empty() && self.held.is_empty();
        if self.peer_shut_send && g2h_flushed && !self.host_write_shut && !self.host_write_broken {
            // Everything the guest sent is out: the host reader sees EOF now.
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.peer_shut_rcv && !self.host_read_shut {
            // Host writers get EPIPE instead of filling a socket nobody reads.
            self.host_read_shut = true;
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        match self.state {
            State::Draining if g2h_flushed || self.host_write_broken => {
                Verdict::Kill { rst: false }
            }
            State::Established if self.both_done() => Verdict::Kill { rst: true },
            _ => Verdict::Keep,
        }
    }

    fn both_done(&self) -> bool {
        let g2h = (self.peer_shut_send && self.tx_buf.is_empty() && self.held.is_empty())
            || (self.host_write_broken && self.shutdown_sent & SHUTDOWN_RCV != 0);
        let h2g = self.peer_shut_rcv || (self.host_eof && self.shutdown_sent & SHUTDOWN_SEND != 0);
        g2h && h2g
    }

    /// Writes the next packet for the guest into `buf`, if any.
    pub fn fill_rx(&mut self, buf: &RxBuffer, mem: &GuestMemory, scratch: &mut [u8]) -> Fill {
        match self.state {
            State::Connecting if self.need_request => {
                self.need_request = false;
                self.send(buf, mem, self.header(OP_REQUEST), &[])
            }
            State::Established => self.fill_established(buf, mem, scratch),
            _ => Fill::Nothing,
        }
    }

    fn fill_established(&mut self, buf: &RxBuffer, mem: &GuestMemory, scratch: &mut [u8]) -> Fill {
        if self.need_response {
            self.need_response = false;
            return self.send(buf, mem, self.header(OP_RESPONSE), &[]);
        }
        while self.host_readable && self.can_read_host() {
            let credit = self.peer_credit();
            if credit == 0 {
                if self.credit_request_sent {
                    break;
                }
                self.credit_request_sent = true;
                return self.send(buf, mem, self.header(OP_CREDIT_REQUEST), &[]);
            }
            let max = (credit as usize)
                .min(buf.payload_capacity())
                .min(scratch.len());
            if max == 0 {
                // A zero-length read would look like EOF.
                break;
            }
            match (&self.stream).read(&mut scratch[..max]) {
                Ok(0) => {
                    self.host_eof = true;
                    self.host_readable = false;
                }
                Ok(n) => {
                    let fill = self.send(buf, mem, self.header(OP_RW), &scratch[..n]);
                    if let Fill::Packet(_) = fill {
                        self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
                    }
                    return fill;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.host_readable = false,
                Err(_) => return Fill::Kill { rst: true },
            }
        }
        if self.credit_update_due() {
            return self.send(buf, mem, self.header(OP_CREDIT_UPDATE), &[]);
        }
        let due = self.shutdown_due();
        if due != 0 {
            self.shutdown_sent |= due;
            let hdr = self.header(OP_SHUTDOWN).with_flags(self.shutdown_sent);
            let fill = self.send(buf, mem, hdr, &[]);
            if fill != Fill::Nothing && self.both_done() {
                // Closed from the host side: the guest answers with RST.
                self.state = State::Closing;
                self.deadline = Some(Instant::now() + self.tun.close_timeout);
            }
            return fill;
        }
        Fill::Nothing
    }

    fn send(
        &mut self,
        buf: &RxBuffer,
        mem: &GuestMemory,
        hdr: VsockHeader,
        payload: &[u8],
    ) -> Fill {
        match buf.write(mem, hdr, payload) {
            Ok(len) => {
                // Every header tells the guest our fwd_cnt.
                self.last_fwd_cnt_sent = self.fwd_cnt;
                self.need_credit_update = false;
                Fill::Packet(len)
            }
            Err(e) => {
                tracing::warn!(
                    device = "vsock",
                    local_port = self.local_port,
                    peer_port = self.peer_port,
                    error = %e,
                    "write packet to guest rx buffer; resetting connection"
                );
                Fill::Kill { rst: true }
            }
        }
    }

    /// The deadline passed.
    pub fn on_timeout(&mut self, now: Instant) -> Verdict {
        match self.deadline {
            Some(d) if d <= now => {}
            _ => return Verdict::Keep,
        }
        match self.state {
            State::Connecting | State::Closing => Verdict::Kill { rst: true },
            State::Draining => Verdict::Kill { rst: false },
            State::Established => {
                self.deadline = None;
                Verdict::Keep
            }
        }
    }

    /// The header of a `RST` for this connection.
    pub fn rst_header(&self) -> VsockHeader {
        self.header(OP_RST)
    }
}
