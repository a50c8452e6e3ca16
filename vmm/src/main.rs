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
    let config = match cli.to_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("moat-vmm: {e}");
            return ExitCode::BadConfig.into();
        }
    };
    let vmm = match build_microvm(&config, start) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("moat-vmm: {e}");
            return e.exit_code().into();
        }
    };
    let reason = vmm.wait();
    let code = reason.exit_code();
    eprintln!("moat-vmm: {reason} (exit status {})", code as u8);
    code.into()
}
