//! The KVM VM: `/dev/kvm`, the VM file descriptor, its memory slots, and the
//! irqfd/ioeventfd registrations devices need. It owns these KVM objects only.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemory as _, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::arch;
use crate::devices::virtio::GuestMemory;

/// The KVM API version every current kernel reports.
const KVM_API_VERSION: i32 = 12;

/// Why the VM could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateVmError {
    #[error("open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("open /dev/kvm: api version {0}, expected {KVM_API_VERSION}")]
    ApiVersion(i32),
    #[error("open /dev/kvm: kvm lacks capability {0:?}")]
    MissingCap(Cap),
    #[error("create vm: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
}

/// Why guest memory could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterMemoryError {
    #[error("register guest memory: {count} regions, kvm allows {max} slots")]
    TooManyRegions { count: usize, max: usize },
    #[error("register guest memory slot {slot} at {addr:#x}: {source}")]
    SetRegion {
        slot: u32,
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("register guest memory slot {slot}: no host mapping")]
    HostAddress { slot: u32 },
}

/// Why an irqfd or ioeventfd could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterEventError {
    #[error("register irqfd for irq {irq}: {source}")]
    Irqfd {
        irq: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("register ioeventfd at {addr:#x} (datamatch {datamatch}): {source}")]
    Ioeventfd {
        addr: u64,
        datamatch: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A KVM VM.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens `/dev/kvm`, checks the API version and the capabilities this
    /// architecture needs, and creates the VM.
    pub fn new() -> Result<Self, CreateVmError> {
        let kvm = Kvm::new().map_err(CreateVmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(CreateVmError::ApiVersion(version));
        }
        if let Some(cap) = arch::REQUIRED_CAPS
            .iter()
            .find(|cap| !kvm.check_extension(**cap))
        {
            return Err(CreateVmError::MissingCap(*cap));
        }
        let fd = kvm.create_vm().map_err(CreateVmError::CreateVm)?;
        Ok(Vm { kvm, fd })
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Gives every region of `mem` to KVM as one memory slot.
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<(), RegisterMemoryError> {
        let max = self.kvm.get_nr_memslots();
        if mem.num_regions() > max {
            return Err(RegisterMemoryError::TooManyRegions {
                count: mem.num_regions(),
                max,
            });
        }
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| RegisterMemoryError::HostAddress { slot })?;
            let desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` maps `region.len()` bytes that stay mapped for as
            // long as the VM runs: the `GuestMemory` holding them lives in the
            // `Vmm`, which outlives every vCPU thread, and regions never overlap.
            unsafe { self.fd.set_user_memory_region(desc) }.map_err(|source| {
                RegisterMemoryError::SetRegion {
                    slot,
                    addr: desc.guest_phys_addr,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Makes a write to `evt` raise `irq`.
    pub fn register_irqfd(&self, evt: &EventFd, irq: u32) -> Result<(), RegisterEventError> {
        self.fd
            .register_irqfd(evt, irq)
            .map_err(|source| RegisterEventError::Irqfd { irq, source })
    }

    /// Makes a 4-byte guest write of `datamatch` at MMIO `addr` signal `evt`
    /// inside KVM, without a VM exit.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), RegisterEventError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| RegisterEventError::Ioeventfd {
                addr,
                datamatch,
                source,
            })
    }
}
