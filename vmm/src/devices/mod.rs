//! Emulated devices. Every device here sits on the guest boundary: whatever the
//! guest writes is hostile, and a bad request fails that request or that device,
//! never the VMM.

pub mod virtio;
