//! `make bench` for the image store: builds a multi-layer image of about 200 MiB
//! (random, poorly compressible data in several layers, plus busybox) in a private
//! `docker-registry`, then measures in the same run, from a cold store each time:
//!
//! - moat: pull + unpack into a fresh store (production settings: fsync/syncfs on);
//! - `skopeo copy docker://… oci:…` + `umoci unpack`;
//! - dockerd 20.10: `docker pull` into a fresh data root (`--insecure-registry`).
//!
//! Prints every run and the medians side by side, with ratios. It never asserts
//! timings. Tools that are missing or cannot start are reported and skipped.
//!
//! Knobs: `MOAT_BENCH_RUNS` (default 3), `MOAT_BENCH_MIB` (random data, default
//! 200), `MOAT_BENCH_LAYERS` (random layers, default 4).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_images::build::ImageBuilder;
use moat_images::registry::{PullOptions, PushOptions, Registry, RegistryConfig};
use moat_images::store::{Store, StoreOptions};
use moat_images::ImageRef;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(5000)
}

fn wait_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// xorshift64*: fast, incompressible enough for gzip.
struct Rng(u64);

impl Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn tar_layer(files: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, &data[..]).expect("tar");
    }
    b.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGTERM lets dockerd stop containerd.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn dir_size(p: &Path) -> u64 {
    let out = Command::new("du").args(["-sb"]).arg(p).output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn open_store(dir: &Path, durable: bool) -> Arc<Store> {
    Arc::new(
        Store::open(
            dir,
            StoreOptions {
                durable,
                ..StoreOptions::default()
            },
        )
        .expect("open store"),
    )
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let runs = env_num("MOAT_BENCH_RUNS", 3).max(1);
    let mib = env_num("MOAT_BENCH_MIB", 200);
    let nlayers = env_num("MOAT_BENCH_LAYERS", 4).max(1);
    if !Path::new("/usr/bin/docker-registry").exists() {
        println!(
            "bench-images: SKIPPED: /usr/bin/docker-registry not installed (apt docker-registry)"
        );
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("moat-bench-")
        .tempdir_in("/var/tmp")
        .expect("work dir");
    let w = work.path();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Registry.
    let port = free_port();
    std::fs::write(
        w.join("registry.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            w.join("registry").display()
        ),
    )
    .expect("registry config");
    let _registry = Proc(
        Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(w.join("registry.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry"),
    );
    if !wait_port(port) {
        println!("bench-images: SKIPPED: docker-registry did not start");
        return;
    }
    let host = format!("127.0.0.1:{port}");
    let name = format!("{host}/bench/big:1");

    // Build the image in a source store and push it.
    let t = Instant::now();
    let src = open_store(&w.join("src"), false);
    let mut b = ImageBuilder::new(&src);
    let busybox = std::fs::read("/bin/busybox").unwrap_or_default();
    let base = tar_layer(&[("bin/busybox".into(), busybox, 0o755)]);
    b.add_layer(&src, &gzip(&base)[..], "ADD busybox /bin/", None)
        .expect("layer");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let per_layer = (mib << 20) / nlayers;
    let files_per_layer = 8;
    let mut compressed = 0u64;
    for l in 0..nlayers {
        let files: Vec<(String, Vec<u8>, u32)> = (0..files_per_layer)
            .map(|f| {
                let mut data = vec![0u8; per_layer / files_per_layer];
                rng.fill(&mut data);
                (format!("data/l{l}/f{f}.bin"), data, 0o644)
            })
            .collect();
        let gz = gzip(&tar_layer(&files));
        compressed += gz.len() as u64;
        b.add_layer(&src, &gz[..], &format!("ADD data/l{l}"), None)
            .expect("layer");
    }
    b.commit(&src, &[ImageRef::parse(&name).expect("name")])
        .expect("commit");
    let reg = Registry::new(RegistryConfig::default());
    rt.block_on(reg.push(&src, &name, &PushOptions::default()))
        .expect("push");
    println!(
        "bench-images: image {name}: {} layers, {:.1} MiB compressed, built and pushed in {:.1} s",
        nlayers + 1,
        compressed as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );

    let mut moat = Vec::new();
    let mut moat_nosync = Vec::new();
    let mut skopeo = Vec::new();
    let mut umoci = Vec::new();
    let mut docker = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let tools = have("skopeo") && have("umoci");
    if !tools {
        notes.push("skopeo+umoci: SKIPPED (not installed)".into());
    }
    let dockerd_ok = have("dockerd") && Path::new("/usr/bin/docker").exists();
    if !dockerd_ok {
        notes.push("docker pull: SKIPPED (dockerd or docker CLI not installed)".into());
    }

    for run_no in 0..runs {
        // moat, production settings.
        let dir = w.join(format!("moat-{run_no}"));
        let store = open_store(&dir, true);
        let reg = Registry::new(RegistryConfig::default());
        let t = Instant::now();
        rt.block_on(reg.pull(&store, &name, &PullOptions::default()))
            .expect("moat pull");
        moat.push(t.elapsed().as_secs_f64());
        let unpacked = dir_size(&dir.join("layers"));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);

        // moat without fsync/syncfs (what the other tools do).
        let dir = w.join(format!("moat-nosync-{run_no}"));
        let store = open_store(&dir, false);
        let t = Instant::now();
        rt.block_on(reg.pull(&store, &name, &PullOptions::default()))
            .expect("moat pull");
        moat_nosync.push(t.elapsed().as_secs_f64());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        if run_no == 0 {
            println!(
                "bench-images: unpacked layers: {:.1} MiB",
                unpacked as f64 / (1 << 20) as f64
            );
        }

        if tools {
            let layout = w.join(format!("oci-{run_no}"));
            let bundle = w.join(format!("bundle-{run_no}"));
            let t = Instant::now();
            let r = run(Command::new("skopeo").args([
                "--insecure-policy",
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{name}"),
                &format!("oci:{}:1", layout.display()),
            ]));
            let t1 = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let r2 = r.and_then(|_| {
                run(Command::new("umoci").args([
                    "unpack",
                    "--image",
                    &format!("{}:1", layout.display()),
                    bundle.to_str().unwrap_or(""),
                ]))
            });
            match r2 {
                Ok(()) => {
                    skopeo.push(t1);
                    umoci.push(t.elapsed().as_secs_f64());
                }
                Err(e) => notes.push(format!("skopeo+umoci run {run_no}: {e}")),
            }
            let _ = std::fs::remove_dir_all(&layout);
            let _ = std::fs::remove_dir_all(&bundle);
        }

        if dockerd_ok {
            match docker_pull(w, run_no, &host, &name) {
                Ok(s) => docker.push(s),
                Err(e) => notes.push(format!("docker pull run {run_no}: {e}")),
            }
        }
    }

    println!("bench-images: {runs} run(s) each, seconds (cold store each run):");
    let show = |label: &str, v: &[f64]| {
        let all: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        println!("  {label:<34} {}", all.join("  "));
    };
    show("moat pull+unpack (durable)", &moat);
    show("moat pull+unpack (no fsync)", &moat_nosync);
    let both: Vec<f64> = skopeo.iter().zip(&umoci).map(|(a, b)| a + b).collect();
    if !both.is_empty() {
        show("skopeo copy", &skopeo);
        show("umoci unpack", &umoci);
        show("skopeo copy + umoci unpack", &both);
    }
    if !docker.is_empty() {
        show("docker pull (dockerd 20.10)", &docker);
    }
    let m = median(&mut moat.clone());
    let size_mib = (mib as f64) + busybox_mib();
    println!("bench-images: medians ({size_mib:.0} MiB of layer data):");
    let line = |label: &str, v: f64| {
        println!(
            "  {label:<34} {v:>7.2} s  {:>7.1} MiB/s  {:>5.2}x moat",
            size_mib / v,
            v / m
        );
    };
    line("moat pull+unpack (durable)", m);
    line(
        "moat pull+unpack (no fsync)",
        median(&mut moat_nosync.clone()),
    );
    if !both.is_empty() {
        line("skopeo copy + umoci unpack", median(&mut both.clone()));
    }
    if !docker.is_empty() {
        line("docker pull", median(&mut docker.clone()));
    }
    for n in notes {
        println!("bench-images: {n}");
    }
}

fn busybox_mib() -> f64 {
    std::fs::metadata("/bin/busybox")
        .map(|m| m.len() as f64 / (1 << 20) as f64)
        .unwrap_or(0.0)
}

/// Starts a private dockerd (untimed), times `docker pull`, stops it.
fn docker_pull(w: &Path, run_no: usize, host: &str, name: &str) -> Result<f64, String> {
    let dir = tempfile::Builder::new()
        .prefix("mbd")
        .tempdir_in("/tmp")
        .map_err(|e| e.to_string())?;
    let d = dir.path();
    let sock = format!("unix://{}", d.join("d.sock").display());
    let data: PathBuf = w.join(format!("docker-{run_no}"));
    let log = std::fs::File::create(d.join("log")).map_err(|e| e.to_string())?;
    let child = Command::new("dockerd")
        .args(["-H", &sock, "--data-root"])
        .arg(&data)
        .arg("--exec-root")
        .arg(d.join("x"))
        .arg("--pidfile")
        .arg(d.join("pid"))
        .args([
            "--bridge=none",
            "--iptables=false",
            "--insecure-registry",
            host,
        ])
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let daemon = Proc(child);
    let docker = || {
        let mut c = Command::new("/usr/bin/docker");
        c.args(["-H", &sock]);
        c
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if run(docker().arg("version")).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "dockerd did not start: {}",
                std::fs::read_to_string(d.join("log")).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = Instant::now();
    run(docker().args(["pull", "-q", name]))?;
    let secs = t.elapsed().as_secs_f64();
    drop(daemon);
    let _ = std::fs::remove_dir_all(&data);
    Ok(secs)
}
