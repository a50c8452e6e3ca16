//! The `net_tx` target: tx frames, rx buffers and frames from the host.

use arbitrary::Arbitrary;

use crate::guest::ChainSpec;
use crate::Bytes;

#[derive(Arbitrary, Debug)]
pub struct TxFrame {
    pub chain: ChainSpec,
    pub hdr: [u8; 12],
    pub frame: Bytes,
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub mrg_rxbuf: bool,
    pub tx: Vec<TxFrame>,
    pub rx_bufs: Vec<ChainSpec>,
    /// Datagrams the host side sends (header + frame, as a tap delivers them).
    pub rx_frames: Vec<Bytes>,
}
