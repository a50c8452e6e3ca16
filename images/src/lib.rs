//! moat-images: content-addressed blobs, image records, layer unpack into
//! per-layer directories, registry pull/push and archive import/export. It must
//! not know about VMs or containers.
