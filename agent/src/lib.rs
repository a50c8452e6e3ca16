//! moat-agent: PID 1 in the guest. It mounts the shares, creates containers and
//! streams their stdio over vsock. The `protocol` module (to come) is the one place
//! where host<->guest messages are defined.
