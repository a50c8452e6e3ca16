//! moat-agent: PID 1 in the guest. It mounts the shares, builds each container's
//! rootfs, creates containers with libcontainer, streams their stdio over vsock and
//! reports exit statuses. [`protocol`] is the one place where host<->guest messages are
//! defined; [`client`] is the host side of it. [`spec`] holds Docker's defaults as an
//! OCI spec, for moatd to reuse.
//!
//! Module map: `init` (guest start-up and power-off), `sys` (the system-call seam),
//! `rootfs` (overlay and etc files), `container` (the container table), `helper` (the
//! process that runs libcontainer), `reaper` (all waiting), `devices` (the
//! cgroup v2 device filter), `stdio` (pipes and pumps), `conn` (sockets), `server` (connections and dispatch).

// PID 1 must not panic: a dead init takes the VM and the exit status with it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo
    )
)]

pub mod client;
pub mod conn;
pub mod container;
pub mod devices;
pub mod helper;
pub mod init;
pub mod protocol;
pub mod reaper;
pub mod rootfs;
pub mod server;
pub mod spec;
pub mod stdio;
pub mod sys;
pub mod util;

/// Environment variable with the agent's log filter (`tracing` syntax, e.g. `debug`).
pub const LOG_ENV: &str = "MOAT_AGENT_LOG";
