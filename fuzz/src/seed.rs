//! Writes values in the byte format `arbitrary` 1.5 decodes them from, so seed
//! corpora can be built from the unit tests' valid cases:
//! - integers: little-endian, their full width;
//! - `bool`: one byte, low bit;
//! - enums (derived): a `u32` `x` with `(x * variants) >> 32 == index`;
//! - `Vec<T>`: a `1` byte before each element, a `0` byte after the last;
//! - `Option<T>`: a `bool`, then the value;
//! - [`crate::Bytes`]: a `u16` length, then the bytes;
//! - structs: the fields in order.
//!
//! `gen-corpus` checks every seed by decoding it again and comparing.

use crate::guest::{ChainSpec, RawDesc};

/// An encoder.
#[derive(Debug, Default)]
pub struct Enc {
    pub out: Vec<u8>,
}

impl Enc {
    pub fn new() -> Self {
        Enc::default()
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    /// Selects variant `index` of an enum with `count` variants.
    pub fn variant(&mut self, index: u32, count: u32) -> &mut Self {
        assert!(index < count);
        let x = ((u64::from(index) << 32).div_ceil(u64::from(count))) as u32;
        debug_assert_eq!((u64::from(x) * u64::from(count)) >> 32, u64::from(index));
        self.u32(x)
    }
    /// A `Vec<T>` whose elements `f` encodes.
    pub fn vec<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Self, &T)) -> &mut Self {
        for item in items {
            self.u8(1);
            f(self, item);
        }
        self.u8(0)
    }
    /// An `Option<T>`.
    pub fn option<T>(&mut self, v: Option<&T>, f: impl FnOnce(&mut Self, &T)) -> &mut Self {
        match v {
            Some(v) => {
                self.bool(true);
                f(self, v);
            }
            None => {
                self.bool(false);
            }
        }
        self
    }
    /// A [`crate::Bytes`].
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let n = u16::try_from(b.len()).expect("seed byte string over 64 KiB");
        self.u16(n);
        self.out.extend_from_slice(b);
        self
    }
    /// A [`ChainSpec`].
    pub fn chain(&mut self, c: &ChainSpec) -> &mut Self {
        match c {
            ChainSpec::Good {
                readable,
                writable,
                indirect,
            } => {
                self.variant(0, 2);
                self.vec(readable, |e, &l| {
                    e.u16(l);
                });
                self.vec(writable, |e, &l| {
                    e.u32(l);
                });
                self.bool(*indirect)
            }
            ChainSpec::Raw { descs } => {
                self.variant(1, 2);
                self.vec(descs, |e, d: &RawDesc| {
                    e.u64(d.addr)
                        .u32(d.len)
                        .u16(d.flags)
                        .u16(d.next)
                        .bool(d.fold);
                })
            }
        }
    }
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

/// A well-formed chain: the request in one readable descriptor, then one
/// writable buffer of `writable` bytes (none if 0).
pub fn simple_chain(writable: u32) -> ChainSpec {
    ChainSpec::Good {
        readable: Vec::new(),
        writable: if writable == 0 {
            Vec::new()
        } else {
            vec![writable]
        },
        indirect: false,
    }
}
