//! The `vsock_tx` target: rounds of host actions, rx buffers and tx packets.

use arbitrary::Arbitrary;

use crate::guest::ChainSpec;
use crate::Bytes;

#[derive(Arbitrary, Debug)]
pub enum Cid {
    Guest,
    Host,
    Other(u64),
}

#[derive(Arbitrary, Debug)]
pub enum Port {
    /// One of the host listeners.
    Listening(bool),
    /// A host port the device hands out for host-initiated connections.
    HostSide(u8),
    Other(u32),
}

#[derive(Arbitrary, Debug)]
pub enum Op {
    Request,
    Response,
    Rst,
    Shutdown,
    Rw,
    CreditUpdate,
    CreditRequest,
    Other(u16),
}

#[derive(Arbitrary, Debug)]
pub struct Packet {
    pub chain: ChainSpec,
    pub src_cid: Cid,
    pub dst_cid: Cid,
    pub src_port: u32,
    pub dst_port: Port,
    /// The header's `len`; `None` means the payload's real length.
    pub len: Option<u32>,
    /// The header's type; `None` means stream (1).
    pub type_: Option<u16>,
    pub op: Op,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    pub payload: Bytes,
}

#[derive(Arbitrary, Debug)]
pub enum HostAction {
    /// A host client connects to the device's socket and writes `line`.
    Connect {
        line: Bytes,
    },
    /// Accepts pending guest-initiated connections on the listeners.
    Accept,
    Write {
        conn: u8,
        data: Bytes,
    },
    Read {
        conn: u8,
    },
    ShutdownWrite {
        conn: u8,
    },
    Close {
        conn: u8,
    },
}

#[derive(Arbitrary, Debug)]
pub struct Round {
    pub host: Vec<HostAction>,
    pub rx_bufs: Vec<ChainSpec>,
    pub tx: Vec<Packet>,
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub rounds: Vec<Round>,
}
