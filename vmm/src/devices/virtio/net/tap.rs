//! The host side of virtio-net: a tap device opened through `/dev/net/tun`
//! with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte `virtio_net_hdr_v1`
//! on every frame, no offloads, non-blocking. It owns the tap fd; it must not
//! configure addresses, routes or anything else on the host's network.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Bytes of `virtio_net_hdr_v1` in front of every frame on the tap.
pub const VNET_HDR_LEN: usize = 12;

const TUN_PATH: &str = "/dev/net/tun";

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "open tap {name:?}: invalid interface name (1 to 15 bytes, no '/', ':', '%', \
         whitespace or NUL, not '.' or '..')"
    )]
    InvalidName { name: String },
    #[error("open tap {name}: open {TUN_PATH}: {source}")]
    OpenTun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("open tap {name}: {op}: {source}")]
    Ioctl {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    pub(super) file: File,
    pub(super) name: String,
}

/// Checks an interface name the way the kernel's `dev_valid_name` does, and
/// refuses `%` (a name template would attach to a tap we did not name).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == b'%' || b == 0 || b.is_ascii_whitespace())
}

impl Tap {
    /// Attaches to the tap `name` (an existing persistent tap, or a new one
    /// that lives as long as this fd).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::InvalidName {
                name: name.to_string(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(|source| TapError::OpenTun {
                name: name.to_string(),
                source,
            })?;
        let ioctl_err = |op: &'static str| TapError::Ioctl {
            name: name.to_string(),
            op,
            source: io::Error::last_os_error(),
        };

        // SAFETY: ifreq is plain old data; all zeros is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // The flags fit in a c_short (0x5002).
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `ifr` is one,
        // and lives across the call. The fd is open.
        if unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETIFF,
                &mut ifr as *mut libc::ifreq,
            )
        } < 0
        {
            return Err(ioctl_err("TUNSETIFF"));
        }
        let hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer; `hdr_len`
        // lives across the call.
        if unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &hdr_len as *const libc::c_int,
            )
        } < 0
        {
            return Err(ioctl_err("TUNSETVNETHDRSZ"));
        }
        // No checksum or segmentation offload: the host stack hands the tap
        // complete, checksummed frames, and the tap accepts only those.
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
            return Err(ioctl_err("TUNSETOFFLOAD"));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "tap%d",
            "a b",
            "a\tb",
            "a\0b",
            "sixteen-chars-xx",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
            assert!(matches!(Tap::open(bad), Err(TapError::InvalidName { .. })));
        }
        for good in ["tap0", "moat-1234567890", "a"] {
            assert!(valid_name(good), "{good:?}");
        }
    }
}
