//! moat-vmm: the KVM microVM monitor. It owns the VM, its vCPUs, guest memory, the
//! boot path and the device model. It must not know about containers or images:
//! those belong to the runtime and the agent.

pub mod devices;
