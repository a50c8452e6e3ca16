//! `moat-vmm`: command-line entry point. The boot path is not built yet.

fn main() -> std::process::ExitCode {
    eprintln!("moat-vmm: booting a VM is not supported yet");
    std::process::ExitCode::from(2)
}
