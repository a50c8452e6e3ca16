//! moat-vmm: the KVM microVM monitor. It owns the VM, its vCPUs, guest memory,
//! the boot path and the device model. It must not know about containers or
//! images: those belong to the runtime and the agent.
//!
//! Map: `config`/`cli` (what to build) → `builder` (the recipe) → `vmm` (the
//! running VM) with `vstate` (KVM VM and vCPUs), `arch` (per-architecture boot),
//! `devices` (bus, legacy devices, boot marker, virtio transport and devices),
//! `exit` (why the VM stopped, process exit codes) and `seccomp` (per-thread
//! syscall filters).

pub mod arch;
pub mod builder;
pub mod cli;
pub mod config;
pub mod devices;
pub mod exit;
pub mod logger;
pub mod seccomp;
pub mod signals;
pub mod vmm;
pub mod vstate;
