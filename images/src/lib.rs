//! moat-images: content-addressed blobs, image records, layer unpack into
//! per-layer directories, registry pull/push and archive import/export. It must
//! not know about VMs or containers.

pub mod digest;
pub mod fsutil;
pub mod media;
pub mod platform;
pub mod reference;
pub mod unpack;

pub use digest::Digest;
pub use platform::Platform;
pub use reference::ImageRef;
