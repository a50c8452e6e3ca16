//! Address-range dispatch of guest port I/O and MMIO accesses to devices. A bus
//! owns the map from ranges to devices and nothing else: it is filled while the VM
//! is built and is read-only once vCPUs run, so vCPU threads share it without a
//! lock (each device has its own). [`Buses`] holds the VM's buses: MMIO on every
//! architecture, port I/O on x86_64 only.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device on a bus. `offset` is relative to the start of the device's range;
/// `data` is the guest's access, 1 to 8 bytes, entirely inside that range.
/// Implementations must not panic on any offset or size: unknown registers read
/// as zero (or all-ones where the hardware floats) and ignore writes.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Locks a device, recovering from a poisoned lock: a device's state stays as
/// consistent as the panicking thread left it, and the VMM keeps running.
pub fn lock_device<T: ?Sized>(device: &Mutex<T>) -> MutexGuard<'_, T> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a device could not be added.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("add {name} to the {bus} bus: empty or overflowing range at {base:#x}+{len:#x}")]
    BadRange {
        bus: &'static str,
        name: &'static str,
        base: u64,
        len: u64,
    },
    #[error("add {name} to the {bus} bus at {base:#x}+{len:#x}: overlaps {other}")]
    Overlap {
        bus: &'static str,
        name: &'static str,
        base: u64,
        len: u64,
        other: &'static str,
    },
}

struct BusRange {
    base: u64,
    len: u64,
    name: &'static str,
    device: SharedDevice,
}

/// A port I/O or MMIO bus.
pub struct Bus {
    name: &'static str,
    /// Sorted by `base`, never overlapping.
    ranges: Vec<BusRange>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for r in &self.ranges {
            list.entry(&format_args!("{}@{:#x}+{:#x}", r.name, r.base, r.len));
        }
        list.finish()
    }
}

impl Bus {
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ranges: Vec::new(),
        }
    }

    /// Adds `device` at `base..base+len`.
    pub fn insert(
        &mut self,
        device: SharedDevice,
        name: &'static str,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let bad_range = BusError::BadRange {
            bus: self.name,
            name,
            base,
            len,
        };
        if len == 0 {
            return Err(bad_range);
        }
        let Some(end) = base.checked_add(len) else {
            return Err(bad_range);
        };
        if let Some(other) = self
            .ranges
            .iter()
            .find(|r| base < r.base + r.len && r.base < end)
        {
            return Err(BusError::Overlap {
                bus: self.name,
                name,
                base,
                len,
                other: other.name,
            });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(
            at,
            BusRange {
                base,
                len,
                name,
                device,
            },
        );
        Ok(())
    }

    /// The device whose range holds the whole access `addr..addr+len`, and the
    /// offset of `addr` in it.
    fn find(&self, addr: u64, len: usize) -> Option<(&BusRange, u64)> {
        let idx = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let range = &self.ranges[idx];
        let offset = addr - range.base;
        let end = offset.checked_add(len as u64)?;
        (end <= range.len).then_some((range, offset))
    }

    /// Dispatches a read; `false` if no device holds the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                lock_device(&range.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; `false` if no device holds the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                lock_device(&range.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// The buses vCPU exits are dispatched to.
#[derive(Debug)]
pub struct Buses {
    /// Port I/O (x86_64 only: other architectures have no I/O ports).
    #[cfg(target_arch = "x86_64")]
    pub pio: Bus,
    pub mmio: Bus,
}

impl Buses {
    pub fn new() -> Self {
        Buses {
            #[cfg(target_arch = "x86_64")]
            pio: Bus::new("pio"),
            mmio: Bus::new("mmio"),
        }
    }
}

impl Default for Buses {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access and reads back the offset.
    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn shared() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn dispatch_by_range() {
        let mut bus = Bus::new("test");
        let a = shared();
        let b = shared();
        bus.insert(a.clone(), "a", 0x1000, 0x100).unwrap();
        bus.insert(b.clone(), "b", 0x100, 0x10).unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x1010, &mut data));
        assert_eq!(data, [0x10, 0x10]);
        assert!(bus.write(0x10f, &[7]));
        assert_eq!(b.lock().unwrap().last_write, Some((0xf, vec![7])));
        assert!(a.lock().unwrap().last_write.is_none());
    }

    #[test]
    fn misses_and_straddling_accesses() {
        let mut bus = Bus::new("test");
        bus.insert(shared(), "a", 0x1000, 0x100).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0xfff, &mut data), "before the range");
        assert!(!bus.read(0x10fe, &mut data), "crosses the end");
        assert!(bus.read(0x10fc, &mut data), "ends exactly at the end");
        assert!(!bus.read(0x1100, &mut data), "after the range");
        assert!(!bus.write(u64::MAX, &[1, 2]), "address overflow");
        assert!(!Bus::new("empty").read(0, &mut data));
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let mut bus = Bus::new("test");
        bus.insert(shared(), "a", 0x1000, 0x100).unwrap();
        for (base, len) in [(0xfff, 2), (0x10ff, 1), (0x800, 0x1000), (0x1010, 1)] {
            assert!(
                matches!(
                    bus.insert(shared(), "b", base, len),
                    Err(BusError::Overlap { other: "a", .. })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        assert!(matches!(
            bus.insert(shared(), "z", 0x5000, 0),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(shared(), "o", u64::MAX, 2),
            Err(BusError::BadRange { .. })
        ));
        // Adjacent ranges are fine.
        bus.insert(shared(), "before", 0xf00, 0x100).unwrap();
        bus.insert(shared(), "after", 0x1100, 0x100).unwrap();
        assert_eq!(
            format!("{bus:?}"),
            "[before@0xf00+0x100, a@0x1000+0x100, after@0x1100+0x100]"
        );
    }

    #[test]
    fn survives_a_poisoned_device() {
        let mut bus = Bus::new("test");
        let dev = shared();
        bus.insert(dev.clone(), "a", 0, 0x10).unwrap();
        let poison = dev.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poison.lock().unwrap();
            panic!("device thread panics while holding the lock");
        })
        .join();
        assert!(dev.is_poisoned());
        assert!(bus.write(1, &[9]));
    }
}
