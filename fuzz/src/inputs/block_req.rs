//! The `block_req` target: virtio-blk requests.

use arbitrary::Arbitrary;

use crate::guest::ChainSpec;
use crate::Bytes;

#[derive(Arbitrary, Debug)]
pub enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Other(u32),
}

#[derive(Arbitrary, Debug)]
pub enum Sector {
    /// Near the disk (and its end).
    Near(u8),
    Far(u64),
}

#[derive(Arbitrary, Debug)]
pub struct Range {
    pub sector: Sector,
    pub num_sectors: u32,
    pub flags: u32,
}

#[derive(Arbitrary, Debug)]
pub struct Request {
    pub chain: ChainSpec,
    pub kind: Kind,
    pub ioprio: u32,
    pub sector: Sector,
    /// Discard / write-zeroes ranges (written before `data`).
    pub ranges: Vec<Range>,
    pub data: Bytes,
    /// Cuts the 16-byte header short.
    pub header_len: Option<u8>,
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub read_only: bool,
    pub requests: Vec<Request>,
}
