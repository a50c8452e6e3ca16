//! The `queue_chain` target: a descriptor table, available ring and raw memory writes.

use arbitrary::Arbitrary;

use crate::guest::RawDesc;
use crate::Bytes;

#[derive(Arbitrary, Debug)]
pub struct Input {
    /// Queue size 2^(size_log2 % 9).
    pub size_log2: u8,
    pub descs: Vec<RawDesc>,
    pub heads: Vec<u16>,
    /// Overwrites `avail.idx` (otherwise the number of heads).
    pub avail_idx: Option<u16>,
    /// Raw writes into guest memory (indirect tables, garbage in the rings).
    pub writes: Vec<(u32, Bytes)>,
    pub event_idx: bool,
    pub used_len: u32,
}
