//! moat-runtime: the Engine API server (`moatd`), container store and lifecycle,
//! VM supervision, logs, events, networks, volumes, and the `moat` CLI.
//!
//! Today: [`sandbox`], one container's microVM (what moatd will use for every
//! container). moatd and the CLI are not built yet.

pub mod sandbox;
