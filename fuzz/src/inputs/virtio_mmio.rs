//! The `virtio_mmio` target: register accesses and driver steps against one device.

use arbitrary::Arbitrary;

use crate::guest::ChainSpec;
use crate::Bytes;

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Device {
    Fake {
        can_reset: bool,
        fail_activate: bool,
    },
    Rng,
    Block {
        read_only: bool,
    },
}

#[derive(Arbitrary, Debug)]
pub enum Op {
    Read {
        offset: u16,
        size: u8,
    },
    Write {
        offset: u16,
        size: u8,
        value: u64,
    },
    /// ACKNOWLEDGE, DRIVER, both feature words, FEATURES_OK.
    Negotiate {
        features: u64,
    },
    /// Selects queue `index` and writes its size and ring addresses (the
    /// simulated guest's layout, or the given ones) and, if asked, READY.
    SetupQueue {
        index: u8,
        size: u16,
        rings: Option<(u64, u64, u64)>,
        ready: bool,
    },
    DriverOk,
    Notify {
        queue: u32,
    },
    /// Publishes a chain on queue `queue` as the simulated guest laid it out.
    Chain {
        queue: u8,
        chain: ChainSpec,
        request: Bytes,
    },
    Reset,
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub device: Device,
    pub ops: Vec<Op>,
}
