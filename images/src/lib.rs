//! moat-images: content-addressed blobs, image records, layer unpack into
//! per-layer directories, registry pull/push and archive import/export. It must
//! not know about VMs or containers.

pub mod archive;
pub mod build;
pub mod digest;
pub mod fsutil;
pub mod inspect;
pub mod manifest;
pub mod media;
pub mod platform;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use platform::Platform;
pub use reference::ImageRef;
pub use store::{ImageRecord, LayerRef, Store, StoreError, StoreOptions};
