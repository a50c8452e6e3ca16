//! `moat-agent` entry point. The agent is not built yet.

fn main() -> std::process::ExitCode {
    eprintln!("moat-agent: not supported yet");
    std::process::ExitCode::from(2)
}
