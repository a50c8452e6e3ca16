//! The `fs_fuse` target: FUSE requests on a share layout.

use arbitrary::Arbitrary;

use crate::guest::ChainSpec;
use crate::Bytes;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    ReadOnly,
    ReadWrite,
    Layers,
}

#[derive(Arbitrary, Debug)]
pub enum Node {
    Root,
    /// A node id from an earlier reply.
    Learned(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
pub struct Request {
    /// The high-priority queue (0) instead of the request queue (1).
    pub hiprio: bool,
    pub opcode: u32,
    pub node: Node,
    pub uid: u32,
    pub gid: u32,
    /// Replaces the body's first 8 bytes (where most requests keep `fh`) with
    /// a handle from an earlier reply.
    pub fh: Option<u8>,
    pub body: Bytes,
    /// The header's `len`; `None` means the real length.
    pub len: Option<u32>,
    pub chain: ChainSpec,
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub layout: Layout,
    /// Sends FUSE_INIT first (most requests fail before it).
    pub init: bool,
    pub requests: Vec<Request>,
}
