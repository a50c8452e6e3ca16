//! The host side of the device: the listening Unix socket, host clients still in
//! their handshake, and the connections keyed by (local port, peer port). It
//! routes guest packets to connections, answers packets for unknown connections
//! with `RST`, picks the next packet for the guest, and runs the timers.
//!
//! Owns: every host fd of the device and its registration in the muxer's own
//! epoll fd (which the worker polls as one source), host port allocation, and the
//! queue of pending `RST`s. It must not touch the virtqueues: the worker hands it
//! parsed packets and rx buffers and returns the tx chains it reports completed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::csm::{Connection, Fill, Verdict};
use super::handshake::{HandshakeError, LineReader, ReadError};
use super::metrics::VsockMetrics;
use super::packet::{
    check_header, op_name, RxBuffer, TxPacket, TxParseError, VsockHeader, HOST_CID, MAX_PAYLOAD,
    OP_REQUEST, OP_RST,
};
use super::ratelimit::LogLimiter;
use super::Tunables;
use crate::devices::virtio::GuestMemory;

/// First port the device hands out for host-initiated connections; guest
/// listeners use small ports, so these do not collide in practice.
const HOST_PORT_FIRST: u32 = 1 << 30;
/// `VMADDR_PORT_ANY` is `u32::MAX`; never hand it out.
const HOST_PORT_LAST: u32 = u32::MAX - 1;
/// Most `RST`s queued for the guest while it gives no rx buffers; more are
/// dropped (the guest then only learns by its own timeouts).
const MAX_PENDING_RST: usize = 1024;

const TOKEN_LISTENER: u64 = 0;
/// How long the listener is not polled after `accept` failed (out of fds).
const LISTENER_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Debug)]
struct Entry {
    conn: Connection,
    token: u64,
    /// In `rx_queue`.
    queued: bool,
    /// Events registered in epoll; `None` when not registered.
    registered: Option<EventSet>,
    /// The deadline a timer is scheduled for.
    timer: Option<Instant>,
    /// Last values reported to the metrics.
    buffered: usize,
    held: usize,
    /// A port from the host range, to be freed on removal.
    host_port: bool,
}

#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    reader: LineReader,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Handshake,
    Conn(ConnKey),
}

#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    tun: Tunables,
    epoll: Epoll,
    listener: UnixListener,
    conns: HashMap<ConnKey, Entry>,
    handshakes: HashMap<u64, Handshake>,
    tokens: HashMap<u64, Slot>,
    host_ports: HashSet<u32>,
    rx_queue: VecDeque<ConnKey>,
    rst_queue: VecDeque<VsockHeader>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    next_token: u64,
    next_host_port: u32,
    completed_tx: Vec<u16>,
    scratch: Vec<u8>,
    log: LogLimiter,
    metrics: Arc<VsockMetrics>,
}

impl Muxer {
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        tun: Tunables,
        metrics: Arc<VsockMetrics>,
    ) -> io::Result<Muxer> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        Ok(Muxer {
            guest_cid,
            uds_path,
            tun,
            epoll,
            listener,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            tokens: HashMap::new(),
            host_ports: HashSet::new(),
            rx_queue: VecDeque::new(),
            rst_queue: VecDeque::new(),
            timers: BinaryHeap::new(),
            next_token: TOKEN_LISTENER + 1,
            next_host_port: HOST_PORT_FIRST,
            completed_tx: Vec::new(),
            scratch: vec![0; MAX_PAYLOAD],
            log: LogLimiter::new(20, Duration::from_secs(1)),
            metrics,
        })
    }

    /// The fd the worker polls: readable when a host socket has an event.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Tx chains the muxer is done with, for the used ring.
    pub fn take_completed_tx(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.completed_tx)
    }

    /// Whether a packet for the guest is pending.
    pub fn has_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_queue.is_empty()
    }

    // ---- host side -------------------------------------------------------

    /// Handles every pending event on host sockets.
    pub fn process_host_events(&mut self, mem: &GuestMemory) {
        let mut events = [EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(device = "vsock", error = %e, "wait for host socket events");
                    return;
                }
            };
            for ev in &events[..n] {
                let set = EventSet::from_bits_truncate(ev.events());
                match ev.data() {
                    TOKEN_LISTENER => self.accept_clients(),
                    token => match self.tokens.get(&token).copied() {
                        Some(Slot::Handshake) => self.advance_handshake(token),
                        Some(Slot::Conn(key)) => {
                            if let Some(e) = self.conns.get_mut(&key) {
                                let v = e.conn.on_host_event(
                                    set,
                                    mem,
                                    &mut self.scratch,
                                    &mut self.completed_tx,
                                );
                                self.settle(key, v);
                            }
                        }
                        None => {}
                    },
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn alloc_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the client stays in the backlog, and
                    // the listener would stay readable. Stop polling it for a
                    // while instead of spinning.
                    if self.log.allow() {
                        tracing::warn!(
                            device = "vsock",
                            error = %e,
                            "accept host client; pausing the listener"
                        );
                    }
                    self.pause_listener();
                    return;
                }
            };
            if self.handshakes.len() >= self.tun.max_handshakes
                || self.conns.len() >= self.tun.max_connections
            {
                self.metrics.inc_handshakes_refused();
                if self.log.allow() {
                    tracing::warn!(
                        device = "vsock",
                        handshakes = self.handshakes.len(),
                        connections = self.conns.len(),
                        "too many host clients; closing new client"
                    );
                }
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!(device = "vsock", error = %e, "set host client non-blocking");
                continue;
            }
            let token = self.alloc_token();
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            ) {
                tracing::warn!(device = "vsock", error = %e, "poll host client");
                continue;
            }
            let deadline = Instant::now() + self.tun.handshake_timeout;
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    reader: LineReader::default(),
                    deadline,
                },
            );
            self.tokens.insert(token, Slot::Handshake);
            self.push_timer(deadline, token);
            // Clients usually send their line with the connect: read it now so
            // a burst of clients does not pile up as pending handshakes.
            self.advance_handshake(token);
        }
    }

    fn pause_listener(&mut self) {
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Modify,
            self.listener.as_raw_fd(),
            EpollEvent::new(EventSet::empty(), TOKEN_LISTENER),
        ) {
            tracing::error!(device = "vsock", error = %e, "pause listener");
            return;
        }
        self.timers
            .push(Reverse((Instant::now() + LISTENER_PAUSE, TOKEN_LISTENER)));
    }

    fn resume_listener(&mut self) {
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Modify,
            self.listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        ) {
            tracing::error!(device = "vsock", error = %e, "resume listener");
        }
    }

    fn advance_handshake(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        match hs.reader.read_from(&mut &hs.stream) {
            Ok(None) => {}
            Ok(Some(port)) => {
                if let Some(hs) = self.handshakes.remove(&token) {
                    self.start_host_connection(token, hs.stream, port);
                }
            }
            Err(e) => {
                if !matches!(e, ReadError::Handshake(HandshakeError::Eof)) && self.log.allow() {
                    tracing::warn!(device = "vsock", error = %e, "host client handshake; closing client");
                }
                self.drop_handshake(token);
            }
        }
    }

    fn drop_handshake(&mut self, token: u64) {
        if let Some(hs) = self.handshakes.remove(&token) {
            self.metrics.inc_handshakes_refused();
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                hs.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.tokens.remove(&token);
    }

    fn alloc_host_port(&mut self) -> Option<u32> {
        // At most max_connections ports are in use, so this ends quickly.
        for _ in 0..=self.tun.max_connections {
            let port = self.next_host_port;
            self.next_host_port = if port >= HOST_PORT_LAST {
                HOST_PORT_FIRST
            } else {
                port + 1
            };
            if !self.host_ports.contains(&port) {
                return Some(port);
            }
        }
        None
    }

    /// A host client asked for guest port `port`: send the guest a `REQUEST`.
    fn start_host_connection(&mut self, token: u64, stream: UnixStream, port: u32) {
        let Some(local_port) = self.alloc_host_port() else {
            self.metrics.inc_handshakes_refused();
            self.tokens.remove(&token);
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let conn = Connection::host_initiated(
            stream,
            local_port,
            port,
            self.guest_cid,
            self.tun,
            Instant::now(),
        );
        self.host_ports.insert(local_port);
        self.insert(key, token, conn, Some(EventSet::IN), true);
    }

    fn insert(
        &mut self,
        key: ConnKey,
        token: u64,
        conn: Connection,
        registered: Option<EventSet>,
        host_port: bool,
    ) {
        self.tokens.insert(token, Slot::Conn(key));
        self.conns.insert(
            key,
            Entry {
                conn,
                token,
                queued: false,
                registered,
                timer: None,
                buffered: 0,
                held: 0,
                host_port,
            },
        );
        self.metrics.add_connections(1);
        self.settle(key, Verdict::Keep);
    }

    /// Applies a verdict: removes the connection, or brings its epoll
    /// registration, rx scheduling, timer and metrics up to date.
    fn settle(&mut self, key: ConnKey, verdict: Verdict) {
        let Some(e) = self.conns.get_mut(&key) else {
            return;
        };
        if let Verdict::Kill { rst } = verdict {
            self.remove(key, rst);
            return;
        }
        let want = e.conn.interest();
        if want != e.registered {
            let fd = e.conn.stream().as_raw_fd();
            let res = match (e.registered, want) {
                (_, None) => self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
                (None, Some(ev)) => {
                    self.epoll
                        .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, e.token))
                }
                (Some(_), Some(ev)) => {
                    self.epoll
                        .ctl(ControlOperation::Modify, fd, EpollEvent::new(ev, e.token))
                }
            };
            match res {
                Ok(()) => e.registered = want,
                Err(err) => {
                    tracing::warn!(device = "vsock", error = %err, "poll host socket; resetting connection");
                    self.remove(key, true);
                    return;
                }
            }
        }
        if !e.queued && e.conn.wants_rx() {
            e.queued = true;
            self.rx_queue.push_back(key);
        }
        let deadline = e.conn.deadline();
        let token = e.token;
        let buffered = e.conn.buffered();
        let held = e.conn.held();
        self.metrics
            .add_buffered(buffered as i64 - e.buffered as i64);
        self.metrics.add_held(held as i64 - e.held as i64);
        e.buffered = buffered;
        e.held = held;
        if deadline != e.timer {
            e.timer = deadline;
            if let Some(d) = deadline {
                self.push_timer(d, token);
            }
        }
    }

    /// Schedules a timer. Superseded timers stay in the heap until due; when
    /// they pile up (connections churning), the heap is rebuilt without them.
    fn push_timer(&mut self, at: Instant, token: u64) {
        self.timers.push(Reverse((at, token)));
        let live = self.conns.len() + self.handshakes.len() + 1;
        if self.timers.len() > 4 * live + 1024 {
            let mut timers = std::mem::take(&mut self.timers).into_vec();
            timers.retain(|Reverse((t, token))| self.timer_is_live(*t, *token));
            self.timers = BinaryHeap::from(timers);
        }
    }

    fn timer_is_live(&self, at: Instant, token: u64) -> bool {
        if token == TOKEN_LISTENER {
            return true;
        }
        match self.tokens.get(&token) {
            Some(Slot::Handshake) => self
                .handshakes
                .get(&token)
                .is_some_and(|h| h.deadline == at),
            Some(Slot::Conn(key)) => self.conns.get(key).is_some_and(|e| e.timer == Some(at)),
            None => false,
        }
    }

    fn remove(&mut self, key: ConnKey, rst: bool) {
        let Some(mut e) = self.conns.remove(&key) else {
            return;
        };
        if e.registered.is_some() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                e.conn.stream().as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.tokens.remove(&e.token);
        if e.host_port {
            self.host_ports.remove(&key.local_port);
        }
        self.completed_tx.extend(e.conn.take_held());
        self.metrics.add_connections(-1);
        self.metrics.add_buffered(-(e.buffered as i64));
        self.metrics.add_held(-(e.held as i64));
        if rst {
            let hdr = e.conn.rst_header();
            self.queue_rst(hdr);
        }
        // Dropping the connection closes the host socket.
    }

    fn queue_rst(&mut self, hdr: VsockHeader) {
        if self.rst_queue.len() >= MAX_PENDING_RST {
            if self.log.allow() {
                tracing::warn!(
                    device = "vsock",
                    "too many RST packets pending for the guest; dropping one"
                );
            }
            return;
        }
        self.rst_queue.push_back(hdr);
    }

    /// Answers a refused guest packet with `RST`. When it belongs to a live
    /// connection, that connection is reset too: the guest's stream lost a
    /// packet, so neither side may go on as if nothing happened.
    fn reset_for(&mut self, hdr: &VsockHeader) {
        let key = ConnKey {
            local_port: hdr.dst_port(),
            peer_port: hdr.src_port(),
        };
        if hdr.dst_cid() == HOST_CID && self.conns.contains_key(&key) {
            self.remove(key, true);
        } else {
            self.answer_rst(hdr);
        }
    }

    /// A `RST` answering guest packet `hdr`.
    fn answer_rst(&mut self, hdr: &VsockHeader) {
        if hdr.op() == OP_RST {
            return;
        }
        let rst = VsockHeader::to_guest(self.guest_cid, hdr.dst_port(), hdr.src_port(), OP_RST)
            .with_src_cid(hdr.dst_cid());
        self.queue_rst(rst);
    }

    // ---- guest side ------------------------------------------------------

    /// A chain from the tx queue, parsed or not.
    pub fn handle_tx(&mut self, parsed: Result<TxPacket, TxParseError>, mem: &GuestMemory) {
        let pkt = match parsed {
            Ok(p) => p,
            Err(TxParseError { head, hdr, error }) => {
                self.metrics.inc_bad_packets();
                if self.log.allow() {
                    tracing::warn!(device = "vsock", head, ?hdr, %error, "malformed tx packet from guest");
                }
                self.completed_tx.push(head);
                // Answer only a sender the guest can be: the header was readable
                // and names the guest as its source.
                if let Some(hdr) = hdr.filter(|h| h.src_cid() == self.guest_cid) {
                    self.reset_for(&hdr);
                }
                return;
            }
        };
        let hdr = *pkt.hdr();
        if let Err(error) = check_header(&hdr, self.guest_cid) {
            self.metrics.inc_bad_packets();
            if self.log.allow() {
                tracing::warn!(device = "vsock", ?hdr, %error, "refused tx packet from guest");
            }
            self.completed_tx.push(pkt.head());
            if error.answer_with_rst() {
                self.reset_for(&hdr);
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port(),
            peer_port: hdr.src_port(),
        };
        if let Some(e) = self.conns.get_mut(&key) {
            if hdr.op() == OP_REQUEST {
                // A second REQUEST on a live connection: the guest lost track of
                // it. Reset both.
                self.metrics.inc_bad_packets();
                self.completed_tx.push(pkt.head());
                self.remove(key, true);
                return;
            }
            let v = e
                .conn
                .on_guest_packet(pkt, mem, &mut self.scratch, &mut self.completed_tx);
            if v == (Verdict::Kill { rst: true }) {
                self.metrics.inc_bad_packets();
            }
            self.settle(key, v);
            return;
        }
        self.completed_tx.push(pkt.head());
        match hdr.op() {
            OP_REQUEST => self.guest_connect(&hdr),
            // Nothing to reset.
            OP_RST => {}
            op => {
                tracing::debug!(
                    device = "vsock",
                    local_port = key.local_port,
                    peer_port = key.peer_port,
                    op = op_name(op),
                    "guest packet for unknown connection; answering RST"
                );
                self.answer_rst(&hdr);
            }
        }
    }

    /// The guest connects to host port P: connect to `<uds_path>_P`.
    fn guest_connect(&mut self, hdr: &VsockHeader) {
        if self.conns.len() >= self.tun.max_connections {
            if self.log.allow() {
                tracing::warn!(
                    device = "vsock",
                    "too many connections; refusing guest connect"
                );
            }
            self.answer_rst(hdr);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port()));
        let path = PathBuf::from(path);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(
                    device = "vsock",
                    path = %path.display(),
                    error = %e,
                    "guest connect: no host listener; answering RST"
                );
                self.answer_rst(hdr);
                return;
            }
        };
        let key = ConnKey {
            local_port: hdr.dst_port(),
            peer_port: hdr.src_port(),
        };
        let conn = Connection::guest_initiated(stream, hdr, self.guest_cid, self.tun);
        let token = self.alloc_token();
        self.insert(key, token, conn, None, false);
    }

    /// Writes the next pending packet into `buf`. `None` when nothing was
    /// pending after all (the buffer stays unused).
    pub fn fill_rx(&mut self, buf: &RxBuffer, mem: &GuestMemory) -> Option<u32> {
        // Each queued connection is asked at most once per call.
        let mut budget = self.rx_queue.len();
        loop {
            if let Some(rst) = self.rst_queue.pop_front() {
                match buf.write(mem, rst, &[]) {
                    Ok(len) => {
                        self.metrics.inc_rst_sent();
                        return Some(len);
                    }
                    Err(e) => {
                        tracing::warn!(device = "vsock", error = %e, "write RST to guest rx buffer");
                        return None;
                    }
                }
            }
            if budget == 0 {
                return None;
            }
            budget -= 1;
            let key = self.rx_queue.pop_front()?;
            let Some(e) = self.conns.get_mut(&key) else {
                continue;
            };
            e.queued = false;
            match e.conn.fill_rx(buf, mem, &mut self.scratch) {
                Fill::Packet(len) => {
                    self.settle(key, Verdict::Keep);
                    return Some(len);
                }
                Fill::Nothing => self.settle(key, Verdict::Keep),
                Fill::Kill { rst } => self.settle(key, Verdict::Kill { rst }),
            }
        }
    }

    // ---- timers ----------------------------------------------------------

    /// Time until the next timer, if any.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.timers
            .peek()
            .map(|Reverse((t, _))| t.saturating_duration_since(now))
    }

    /// Fires every timer due at `now`.
    pub fn process_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, token))) = self.timers.peek().copied() {
            if t > now {
                return;
            }
            self.timers.pop();
            if token == TOKEN_LISTENER {
                self.resume_listener();
                continue;
            }
            match self.tokens.get(&token).copied() {
                Some(Slot::Handshake)
                    if self.handshakes.get(&token).is_some_and(|h| h.deadline == t) =>
                {
                    if self.log.allow() {
                        tracing::warn!(
                            device = "vsock",
                            "host client handshake timed out; closing client"
                        );
                    }
                    self.drop_handshake(token);
                }
                Some(Slot::Conn(key)) => {
                    let Some(e) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    if e.timer != Some(t) {
                        continue;
                    }
                    e.timer = None;
                    let v = e.conn.on_timeout(now);
                    if v != Verdict::Keep {
                        tracing::debug!(
                            device = "vsock",
                            local_port = key.local_port,
                            peer_port = key.peer_port,
                            state = ?e.conn.state(),
                            "connection timed out"
                        );
                    }
                    self.settle(key, v);
                }
                // A stale timer: the handshake completed or was dropped.
                Some(Slot::Handshake) | None => {}
            }
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // The worker stopped: its connections and their buffers are gone.
        for e in self.conns.values() {
            self.metrics.add_connections(-1);
            self.metrics.add_buffered(-(e.buffered as i64));
            self.metrics.add_held(-(e.held as i64));
        }
    }
}

/// Connects to a Unix socket without blocking: a listener whose backlog is full
/// fails with `EAGAIN` instead of stalling the device.
pub(super) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: `sockaddr_un` is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or contains NUL",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created socket nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: `addr` is a valid, initialised `sockaddr_un` and `len` does not
    // exceed its size (checked above); the result is checked.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::super::tests::TempDir;
    use super::*;

    #[test]
    fn nonblocking_connect_refuses_missing_and_overlong_paths() {
        use std::io::{Read, Write};
        let dir = TempDir::new();
        assert_eq!(
            connect_nonblocking(&dir.join("nobody")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            connect_nonblocking(&dir.join(&"x".repeat(200)))
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        let listener = UnixListener::bind(dir.join("l")).unwrap();
        let mut s = connect_nonblocking(&dir.join("l")).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        s.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    fn test_muxer() -> (Muxer, TempDir) {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.join("v.sock")).unwrap();
        let mux = Muxer::new(
            3,
            dir.join("v.sock"),
            listener,
            Tunables::default(),
            Arc::new(VsockMetrics::default()),
        )
        .unwrap();
        (mux, dir)
    }

    #[test]
    fn superseded_timers_do_not_pile_up() {
        let (mut mux, _dir) = test_muxer();
        let now = Instant::now();
        for token in 1000..10_000 {
            mux.push_timer(now + Duration::from_secs(60), token);
        }
        assert!(
            mux.timers.len() <= 4 + 1024 + 1,
            "{} timers kept",
            mux.timers.len()
        );
    }

    #[test]
    fn paused_listener_resumes_on_its_timer() {
        let (mut mux, dir) = test_muxer();
        let path = dir.join("v.sock");
        let mem = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)]).unwrap();
        mux.pause_listener();
        let _client = UnixStream::connect(&path).unwrap();
        mux.process_host_events(&mem);
        assert!(mux.handshakes.is_empty(), "paused listener accepted");
        let now = Instant::now();
        assert!(mux.next_timeout(now).unwrap() <= LISTENER_PAUSE);
        mux.process_timers(now + LISTENER_PAUSE);
        mux.process_host_events(&mem);
        assert_eq!(mux.handshakes.len(), 1, "listener not resumed");
    }
}
