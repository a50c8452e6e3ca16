//! Input types of the structured targets, shared with `gen-corpus` (which
//! writes seeds in their byte format and checks they decode back).

pub mod block_req;
pub mod fs_fuse;
pub mod layer_unpack;
pub mod net_tx;
pub mod queue_chain;
pub mod virtio_mmio;
pub mod vsock_tx;
