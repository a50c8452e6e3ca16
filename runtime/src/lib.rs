//! moat-runtime: the Engine API server (`moatd`), container store and lifecycle,
//! VM supervision, logs, events, networks, volumes, and the `moat` CLI.
//!
//! Today: [`sandbox`], one container's microVM (what moatd will use for every
//! container), and [`demo_image`], the bundled busybox image of `moat-demo`.
//! moatd and the CLI are not built yet.

pub mod demo_image;
pub mod sandbox;
