//! `moat-agent-ctl`: a small host-side command line for the agent protocol, for
//! debugging a guest and for the end-to-end test, which runs it inside the test host.
//! It owns only argument handling and printing; the protocol is the library's client.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use moat_agent::client::{
    attach_input, attach_output, Client, Connect, UnixConnector, VsockConnector,
};
use moat_agent::protocol::{Configure, CreateRequest, RootfsLayers, StdioConfig, StreamKind};
use moat_agent::spec::{docker_default, SpecOptions};

/// Talks to a moat-agent: over a VMM's hybrid-vsock socket, or host mode's Unix socket.
#[derive(Debug, Parser)]
#[command(name = "moat-agent-ctl", version)]
struct Cli {
    /// The VMM's vsock Unix socket (the agent is on guest port 1024).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "unix",
        required_unless_present = "unix"
    )]
    vsock: Option<PathBuf>,
    /// A host-mode agent's socket.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Keep trying to connect for this many seconds (the guest may still be booting).
    #[arg(long, default_value_t = 0)]
    wait_secs: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the agent answers.
    Ping,
    /// Create, start and wait for one container; its stdout and stderr go to ours, and
    /// its exit code becomes ours.
    Run(RunArgs),
    /// Stop every container and power the guest off.
    Shutdown,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[arg(long, default_value = "c1")]
    id: String,
    /// Image layer directory in the guest, lowest first; repeatable.
    #[arg(long = "layer", value_name = "DIR", required = true)]
    layers: Vec<String>,
    /// overlayfs upper directory in the guest.
    #[arg(long, value_name = "DIR")]
    upper: String,
    /// overlayfs work directory in the guest (same file system as --upper).
    #[arg(long, value_name = "DIR")]
    work: String,
    /// Pass our stdin to the container.
    #[arg(long)]
    stdin: bool,
    /// Ask the agent to power the guest off after this container.
    #[arg(long)]
    oneshot: bool,
    /// `KEY=value`, repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Print timings (create, start, first output byte) on stderr.
    #[arg(long)]
    timing: bool,
    /// Memory limit in bytes (`docker run --memory`).
    #[arg(long, value_name = "BYTES")]
    memory: Option<i64>,
    /// `docker run --pids-limit`.
    #[arg(long, value_name = "N")]
    pids_limit: Option<i64>,
    /// Print the container's cgroup statistics on stderr after it exited.
    #[arg(long)]
    stats: bool,
    /// RLIMIT_NOFILE (soft and hard) instead of Docker's 1048576, e.g. for host mode
    /// on a host where the agent may not raise its hard limit.
    #[arg(long, value_name = "N")]
    nofile: Option<u64>,
    /// The command.
    #[arg(trailing_var_arg = true, required = true)]
    args: Vec<String>,
}

fn connect_with_retry<C: Connect>(c: &C, wait_secs: u64) -> std::io::Result<C::Stream> {
    let deadline = Instant::now() + std::time::Duration::from_secs(wait_secs);
    loop {
        match c.connect() {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (&cli.vsock, &cli.unix) {
        (Some(uds), _) => run(&cli, &VsockConnector::new(uds)),
        (None, Some(path)) => run(&cli, &UnixConnector(path.clone())),
        (None, None) => Err("give --vsock or --unix".to_owned()),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("moat-agent-ctl: {e}");
            ExitCode::from(125)
        }
    }
}

fn run<C: Connect>(cli: &Cli, conn: &C) -> Result<i32, String>
where
    C::Stream: Send + 'static,
{
    let t0 = Instant::now();
    let stream = connect_with_retry(conn, cli.wait_secs).map_err(|e| format!("connect: {e}"))?;
    let mut client = Client::new(stream).map_err(|e| e.to_string())?;
    let connected = t0.elapsed();
    match &cli.command {
        Command::Ping => {
            let v = client.ping().map_err(|e| e.to_string())?;
            println!("moat-agent {v}");
            Ok(0)
        }
        Command::Shutdown => {
            client.shutdown().map_err(|e| e.to_string())?;
            Ok(0)
        }
        Command::Run(a) => {
            if a.oneshot {
                client
                    .configure(Configure {
                        oneshot: Some(true),
                        shares: Vec::new(),
                    })
                    .map_err(|e| e.to_string())?;
            }
            let mut opts = SpecOptions::new(a.args.clone());
            opts.env = a.env.clone();
            opts.memory_limit = a.memory;
            opts.pids_limit = a.pids_limit;
            if let Some(n) = a.nofile {
                opts.rlimits = vec![("RLIMIT_NOFILE".to_owned(), n, n)];
            }
            let spec = docker_default(&opts).map_err(|e| e.to_string())?;
            let stdio = StdioConfig {
                stdin: a.stdin,
                stdout: true,
                stderr: true,
            };
            let t_create = Instant::now();
            let (pid, create_us) = client
                .create(CreateRequest {
                    container: a.id.clone(),
                    spec,
                    rootfs: Some(RootfsLayers {
                        layers: a.layers.clone(),
                        upper: a.upper.clone(),
                        work: a.work.clone(),
                    }),
                    etc: None,
                    stdio,
                })
                .map_err(|e| e.to_string())?;
            let created = t_create.elapsed();
            let first_byte = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
            let pump = |kind: StreamKind| -> Result<std::thread::JoinHandle<()>, String> {
                let s = conn.connect().map_err(|e| format!("connect: {e}"))?;
                let mut out = attach_output(s, &a.id, None, kind).map_err(|e| e.to_string())?;
                let first = first_byte.clone();
                Ok(std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        match out.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if let Ok(mut f) = first.lock() {
                                    f.get_or_insert_with(Instant::now);
                                }
                                let chunk = buf.get(..n).unwrap_or_default();
                                let _ = match kind {
                                    StreamKind::Stderr => std::io::stderr().write_all(chunk),
                                    _ => std::io::stdout().write_all(chunk),
                                };
                            }
                            Err(e) => {
                                eprintln!("moat-agent-ctl: {kind}: {e}");
                                break;
                            }
                        }
                    }
                }))
            };
            let out = pump(StreamKind::Stdout)?;
            let err = pump(StreamKind::Stderr)?;
            if a.stdin {
                let s = conn.connect().map_err(|e| format!("connect: {e}"))?;
                let mut input = attach_input(s, &a.id, None).map_err(|e| e.to_string())?;
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut std::io::stdin(), &mut input);
                    let _ = input.close();
                });
            }
            let t_start = Instant::now();
            let start_us = client.start(&a.id).map_err(|e| e.to_string())?;
            let status = client.wait(&a.id, None).map_err(|e| e.to_string())?;
            let _ = out.join();
            let _ = err.join();
            let _ = std::io::stdout().flush();
            if a.timing {
                let fb = first_byte
                    .lock()
                    .ok()
                    .and_then(|f| *f)
                    .map(|f| format!("{:.1}", f.duration_since(t_create).as_secs_f64() * 1e3))
                    .unwrap_or_else(|| "none".into());
                eprintln!(
                    "timing: connect_ms={:.1} create_ms={:.1} agent_create_ms={:.1} \
                     start_issued_ms={:.1} agent_start_ms={:.1} create_to_first_byte_ms={fb} pid={pid}",
                    connected.as_secs_f64() * 1e3,
                    created.as_secs_f64() * 1e3,
                    create_us as f64 / 1e3,
                    t_start.duration_since(t_create).as_secs_f64() * 1e3,
                    start_us as f64 / 1e3,
                );
            }
            if a.stats {
                let st = client.stats(&a.id).map_err(|e| e.to_string())?;
                let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
                eprintln!(
                    "stats: memory_usage={} memory_limit={} cpu_usec={} pids={} pids_limit={}",
                    show(st.memory_usage_bytes),
                    show(st.memory_limit_bytes),
                    show(st.cpu_usage_usec),
                    show(st.pids_current),
                    show(st.pids_limit),
                );
            }
            if !a.oneshot {
                client.delete(&a.id, false).map_err(|e| e.to_string())?;
            }
            Ok(status.code)
        }
    }
}
