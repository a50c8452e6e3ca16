//! moat-runtime: the Engine API server (`moatd`), container store and lifecycle,
//! VM supervision, logs, events, networks, volumes, and the `moat` CLI.
