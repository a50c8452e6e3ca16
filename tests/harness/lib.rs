//! End-to-end test harness: finds the built artifacts, probes which test tier this
//! machine can run, and runs commands inside the nested KVM test host.
