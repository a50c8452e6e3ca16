//! Shared pieces of moat's fuzz targets: a simulated guest that lays out
//! descriptor chains from fuzzer input (on top of moat-vmm's own test driver,
//! `queue_util::testing`), snapshots of directory trees for the escape checks,
//! byte strings with a compact encoding, and the encoder that writes seed inputs
//! in the byte format `arbitrary` decodes.
//!
//! It owns nothing in the product crates; it must not reach into them other than
//! through their public (or `fuzzing`/`test-utils`) API.

pub mod guest;
pub mod inputs;
pub mod seed;
pub mod tree;

use arbitrary::{Arbitrary, Result, Unstructured};

/// A byte string taken from the input as a `u16` length (little-endian) and that
/// many bytes (fewer if the input runs out): half the size of `Vec<u8>`'s
/// encoding, which spends a continuation byte per element.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl<'a> Arbitrary<'a> for Bytes {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let n = usize::from(u16::arbitrary(u)?).min(u.len());
        Ok(Bytes(u.bytes(n)?.to_vec()))
    }
}

/// Decodes a whole input as `T` the way every target does (not
/// `arbitrary_take_rest`, so seeds written by [`seed::Enc`] decode the same).
pub fn decode<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary(&mut Unstructured::new(data)).ok()
}

/// Sets the process up for a target that writes files: an `RLIMIT_FSIZE` cap (a
/// guest's `fallocate` of a terabyte must not fill the build machine's disk) with
/// `SIGXFSZ` ignored, so an oversized write fails with `EFBIG` instead of killing
/// the fuzzer.
pub fn limit_file_size(bytes: u64) {
    // SAFETY: setting a signal disposition to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `lim` is a valid rlimit that outlives the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) };
    assert_eq!(rc, 0, "setrlimit(RLIMIT_FSIZE)");
}
