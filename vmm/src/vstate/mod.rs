//! KVM state of a microVM: the VM file descriptor with its guest memory, and the
//! vCPUs with their run loop. This module owns the KVM objects; what goes into
//! guest memory and registers at boot is `arch`'s, and what a device does with an
//! access is the device's.

pub mod memory;
pub mod vcpu;
pub mod vm;
