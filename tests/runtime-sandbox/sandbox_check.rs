//! `moat-sandbox-check`: drives moat-runtime's VM sandbox through every case of
//! `tests/runtime_sandbox.rs` in one run (one test-host boot, one VM boot for
//! the cases that need a VM) and prints one `RESULT <json>` line per case. It
//! asserts nothing itself: the test parses the lines and decides. Built static
//! by `make static`; runs inside the test host (nested tier) or here (direct).
//!
//!   moat-sandbox-check --kernel VMLINUX --initrd AGENT.CPIO --vmm MOAT-VMM [--busybox PATH]

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use moat_images::{Store, StoreOptions};
use moat_runtime::demo_image::{import_demo_image, DEFAULT_BUSYBOX};
use moat_runtime::sandbox::{RunIo, RunSpec, Sandbox, SandboxConfig, Timings};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The demo's command.
pub const DEMO_ARGS: [&str; 6] = ["echo", "hello", "from", "a", "moat", "microVM"];

/// 1 MiB of stdin for `cat`: a fixed pattern the test can recompute.
fn stdin_data() -> Vec<u8> {
    (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn result(v: Value) {
    println!("RESULT {v}");
}

struct Args {
    kernel: PathBuf,
    initrd: PathBuf,
    vmm: PathBuf,
    busybox: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut kernel = None;
    let mut initrd = None;
    let mut vmm = None;
    let mut busybox = PathBuf::from(DEFAULT_BUSYBOX);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value)),
            "--initrd" => initrd = Some(PathBuf::from(value)),
            "--vmm" => vmm = Some(PathBuf::from(value)),
            "--busybox" => busybox = PathBuf::from(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        kernel: kernel.ok_or("--kernel is required")?,
        initrd: initrd.ok_or("--initrd is required")?,
        vmm: vmm.ok_or("--vmm is required")?,
        busybox,
    })
}

fn ms(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(d.as_secs_f64() * 1e3))
}

fn timings_json(t: &Timings) -> Value {
    let b = t.breakdown();
    json!({
        "case": "timings",
        "start_to_agent_ms": ms(t.start_to_agent()),
        "start_to_first_output_ms": ms(t.start_to_first_output()),
        "create_to_first_output_ms": ms(t.create_to_first_output()),
        "agent_create_start_ms": ms(t.agent_create_start()),
        "vmm_start_ms": ms(b.map(|b| b.vmm_start)),
        "kernel_boot_ms": ms(b.map(|b| b.kernel_boot)),
        "agent_start_ms": ms(b.map(|b| b.agent_start)),
        "rest_ms": ms(b.map(|b| b.rest)),
        "boot_marker_us": t.boot_marker_us,
        "vcpus_started_us": t.vcpus_started_us,
        "agent_up_uptime_s": t.agent_up_uptime_s,
        "helper_us": t.create_stages.map(|s| s.helper_us),
        "rootfs_us": t.create_stages.map(|s| s.rootfs_us),
    })
}

/// Runs `args` in `sb`; returns the result line's fields and stdout.
fn run_case(sb: &mut Sandbox, args: &[&str], stdin: Option<Vec<u8>>) -> (Value, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let t = Instant::now();
    let r = sb.run(
        &RunSpec::new(args.iter().copied()),
        RunIo {
            stdin: stdin.map(|d| Box::new(io::Cursor::new(d)) as Box<dyn Read + Send>),
            stdout: &mut out,
            stderr: &mut err,
        },
    );
    let v = match r {
        Ok(exit) => json!({
            "exit": exit.code,
            "signal": exit.signal,
            "stdout": String::from_utf8_lossy(&out),
            "stderr": String::from_utf8_lossy(&err),
            "ms": t.elapsed().as_secs_f64() * 1e3,
        }),
        Err(e) => json!({"error": e.to_string()}),
    };
    (v, out)
}

fn with_case(mut v: Value, case: &str) -> Value {
    if let Value::Object(m) = &mut v {
        m.insert("case".into(), json!(case));
    }
    v
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("moat-sandbox-check: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let work = match tempfile::Builder::new().prefix("sandbox-check.").tempdir() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("moat-sandbox-check: work directory: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let config = |id: &str, layers: Vec<PathBuf>| {
        let mut c = SandboxConfig::new(id, work.path().join("containers").join(id), layers);
        c.vmm = args.vmm.clone();
        c.kernel = args.kernel.clone();
        c.initrd = args.initrd.clone();
        c.start_timeout = Duration::from_secs(180);
        c.stop_timeout = Duration::from_secs(30);
        c
    };

    // The demo image, through the real store.
    let t = Instant::now();
    let image = Store::open(
        &work.path().join("images"),
        StoreOptions {
            durable: false,
            ..StoreOptions::default()
        },
    )
    .map_err(|e| e.to_string())
    .and_then(|store| import_demo_image(&store, &args.busybox).map_err(|e| e.to_string()));
    let layers = match image {
        Ok(img) => {
            result(
                json!({"case": "image", "id": img.id.to_string(), "layers": img.layers.len(),
                "applets": img.applets, "ms": t.elapsed().as_secs_f64() * 1e3}),
            );
            img.layers
        }
        Err(e) => {
            result(json!({"case": "image", "error": e}));
            return std::process::ExitCode::from(1);
        }
    };

    // A VMM that cannot start: its kernel is missing. No VM boots.
    let mut missing = config("c-missing", layers.clone());
    missing.kernel = work.path().join("no-such-vmlinux");
    let state = missing.state_dir.clone();
    let error = match Sandbox::start(missing) {
        Ok(sb) => {
            let _ = sb.stop();
            Value::Null
        }
        Err(e) => json!(e.to_string()),
    };
    result(json!({"case": "missing_kernel", "error": error, "state_dir_exists": state.exists()}));

    // One VM for the rest.
    let c1 = config("c1", layers);
    let state = c1.state_dir.clone();
    let t = Instant::now();
    let mut sb = match Sandbox::start(c1) {
        Ok(sb) => sb,
        Err(e) => {
            result(json!({"case": "start", "error": e.to_string()}));
            return std::process::ExitCode::from(1);
        }
    };
    result(json!({"case": "start", "ms": t.elapsed().as_secs_f64() * 1e3}));

    let (v, _) = run_case(&mut sb, &DEMO_ARGS, None);
    result(with_case(v, "demo"));
    result(timings_json(&sb.timings()));

    let (v, _) = run_case(
        &mut sb,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        None,
    );
    result(with_case(v, "exit3"));

    let data = stdin_data();
    let sent = sha256_hex(&data);
    let (mut v, out) = run_case(&mut sb, &["cat"], Some(data));
    if let Value::Object(m) = &mut v {
        m.remove("stdout");
        m.insert("sent_sha256".into(), json!(sent));
        m.insert("got_sha256".into(), json!(sha256_hex(&out)));
        m.insert("got_len".into(), json!(out.len()));
    }
    result(with_case(v, "stdin"));

    let t = Instant::now();
    match sb.stop() {
        Ok(s) => result(json!({
            "case": "stop",
            "vmm_code": s.vmm.code,
            "vmm_signal": s.vmm.signal,
            "reason": s.reason,
            "killed": s.killed,
            "shutdown_acknowledged": s.shutdown_acknowledged,
            "state_dir_exists": state.exists(),
            "ms": t.elapsed().as_secs_f64() * 1e3,
        })),
        Err(e) => result(json!({"case": "stop", "error": e.to_string()})),
    }
    std::process::ExitCode::SUCCESS
}
