//! `moat-vmm`: command-line entry point. Parses the configuration, builds and
//! boots the VM, waits for it to stop, and exits with the code of `exit.rs`.

use std::time::Instant;

use clap::Parser;
use moat_vmm::builder::build_microvm;
use moat_vmm::cli::Cli;
use moat_vmm::exit::ExitCode;

fn main() -> std::process::ExitCode {
    // The boot-time marker counts from here.
    let start = Instant::now();
    // Before any thread exists: one malloc arena (see the function's comment;
    // a confined thread may not open files).
    moat_vmm::seccomp::single_malloc_arena();
    // Before any thread exists, so every thread inherits the mask.
    let signals_blocked = moat_vmm::signals::block_stop_signals();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed.
            let code = if e.use_stderr() {
                ExitCode::BadConfig
            } else {
                ExitCode::Ok
            };
            let _ = e.print();
            return code.into();
        }
    };
    moat_vmm::logger::init(cli.log.as_deref());
    if let Err(e) = &signals_blocked {
        tracing::warn!(error = %e, "block SIGTERM/SIGINT; they will kill the VMM outright");
    }
    let config = match cli.to_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("moat-vmm: {e}");
            return ExitCode::BadConfig.into();
        }
    };
    let mut vmm = match build_microvm(&config, start) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("moat-vmm: {e}");
            return e.exit_code().into();
        }
    };
    // Ordering: helper threads before `start`, which confines this thread
    // with a filter that allows no thread creation.
    if signals_blocked.is_ok() {
        if let Err(e) =
            moat_vmm::signals::spawn_stop_watcher(vmm.exit_handle(), vmm.seccomp_filters())
        {
            tracing::warn!(error = %e, "start the signal thread; SIGTERM/SIGINT are ignored");
        }
    }
    if let Err(e) = vmm.start() {
        eprintln!("moat-vmm: {e}");
        return ExitCode::Error.into();
    }
    let reason = vmm.wait();
    let code = reason.exit_code();
    eprintln!("moat-vmm: {reason} (exit status {})", code as u8);
    code.into()
}
