//! Shared helpers for the image-store end-to-end tests: tool checks that skip
//! with a printed reason (or fail under `MOAT_E2E_REQUIRED=1`), a private
//! `docker-registry` process, a private `dockerd`, test image builders and a
//! flaky TCP proxy. Owns test scaffolding only.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_images::build::ImageBuilder;
use moat_images::store::{Store, StoreOptions};
use moat_images::{Digest, ImageRef};

/// Skips the test (returns false) with a reason, or panics when
/// `MOAT_E2E_REQUIRED=1` says nothing may be skipped.
pub fn skip(reason: &str) -> bool {
    if std::env::var("MOAT_E2E_REQUIRED").as_deref() == Ok("1") {
        panic!("required test cannot run: {reason}");
    }
    eprintln!("SKIP: {reason}");
    false
}

/// True if all `tools` are on this machine (else skips).
pub fn have(tools: &[&str]) -> bool {
    for t in tools {
        let found = if t.starts_with('/') {
            Path::new(t).exists()
        } else {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
                .unwrap_or(false)
        };
        if !found {
            return skip(&format!("{t} not installed"));
        }
    }
    true
}

/// True if running as root (layer unpack needs chown, mknod, trusted xattrs).
pub fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root (chown, mknod, trusted.* xattrs)");
    }
    true
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port}");
}

pub fn store(dir: &Path) -> Arc<Store> {
    Arc::new(
        Store::open(
            dir,
            StoreOptions {
                durable: false,
                ..StoreOptions::default()
            },
        )
        .unwrap(),
    )
}

/// A `docker-registry` (distribution 2.8) serving from a temp dir.
pub struct RegistryProc {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl RegistryProc {
    pub fn start() -> Self {
        Self::start_with("", None)
    }

    /// `extra` is appended to the YAML config; `tls` = (cert, key) paths.
    pub fn start_with(extra: &str, tls: Option<(&Path, &Path)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls_cfg = match tls {
            Some((c, k)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                c.display(),
                k.display()
            ),
            None => String::new(),
        };
        let cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_cfg}{extra}",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        wait_port(port, "docker-registry");
        Self { port, dir, child }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for RegistryProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tar entry for [`tar_layer`].
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

pub fn tar_layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p, m) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*m);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, d, m) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*m);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, p, *d).unwrap();
            }
            E::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Hardlink(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn busybox_bytes() -> Vec<u8> {
    std::fs::read("/bin/busybox").expect("busybox-static installed")
}

/// The three layers of the test image: busybox with a few applets and files; a
/// layer that deletes a file (whiteout) and replaces a directory (opaque); a
/// layer with a hardlink and a setuid file.
pub fn busybox_layers() -> Vec<Vec<u8>> {
    let bb = busybox_bytes();
    let l1 = tar_layer(&[
        E::Dir("bin", 0o755),
        E::File("bin/busybox", &bb, 0o755),
        E::Symlink("bin/sh", "busybox"),
        E::Symlink("bin/ls", "busybox"),
        E::Symlink("bin/cat", "busybox"),
        E::Dir("etc", 0o755),
        E::File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
        E::File("etc/motd", b"base layer\n", 0o644),
        E::Dir("var", 0o755),
        E::Dir("var/cache", 0o755),
        E::File("var/cache/old-1", b"old", 0o644),
        E::File("var/cache/old-2", b"old", 0o644),
        E::Dir("tmp", 0o1777),
    ]);
    let l2 = tar_layer(&[
        E::Dir("etc", 0o755),
        E::File("etc/.wh.motd", b"", 0o644),
        E::Dir("var/cache", 0o755),
        E::File("var/cache/.wh..wh..opq", b"", 0o644),
        E::File("var/cache/new", b"fresh", 0o644),
    ]);
    let l3 = tar_layer(&[
        E::Dir("usr", 0o755),
        E::Dir("usr/bin", 0o755),
        E::File("usr/bin/suid", b"#!/bin/sh\n", 0o4755),
        E::Hardlink("usr/bin/suid-link", "usr/bin/suid"),
    ]);
    vec![l1, l2, l3]
}

/// Builds the busybox test image in `store`, tagged `tag`. Layers are gzipped.
pub fn build_busybox(store: &Store, tag: &str) -> Digest {
    let rc: moat_images::manifest::RunConfig =
        serde_json::from_str(r#"{"Env":["PATH=/usr/bin:/bin"],"Cmd":["/bin/sh"]}"#).unwrap();
    let mut b = ImageBuilder::new(store).run_config(rc);
    for (i, l) in busybox_layers().iter().enumerate() {
        b.add_layer(store, &gzip(l)[..], &format!("layer {i}"), None)
            .unwrap();
    }
    b.add_empty_step("CMD [\"/bin/sh\"]");
    b.commit(store, &[ImageRef::parse(tag).unwrap()]).unwrap()
}

/// Checks the unpacked test image's layers in a store.
pub fn check_busybox_layers(store: &Store, name: &str) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let dirs = store.layer_dirs(name).unwrap();
    assert_eq!(dirs.len(), 3);
    let bb = std::fs::metadata(dirs[0].join("bin/busybox")).unwrap();
    assert_eq!(bb.len(), busybox_bytes().len() as u64);
    assert_eq!(bb.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read_link(dirs[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let wh = std::fs::symlink_metadata(dirs[1].join("etc/motd")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0/0 char device"
    );
    assert_eq!(
        xattr(&dirs[1].join("var/cache"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        std::fs::read(dirs[1].join("var/cache/new")).unwrap(),
        b"fresh"
    );
    let s = std::fs::metadata(dirs[2].join("usr/bin/suid")).unwrap();
    assert_eq!(s.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(
        std::fs::metadata(dirs[2].join("usr/bin/suid-link"))
            .unwrap()
            .ino(),
        s.ino()
    );
    // The busybox binary runs from the layer.
    let out = Command::new(dirs[0].join("bin/busybox"))
        .arg("echo")
        .arg("hi")
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"hi\n");
}

pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings; buf has buf.len() writable bytes.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP proxy to `target` that breaks the first `cuts` connections after they
/// carried `after` bytes from the server, to exercise retry and resume.
pub struct FlakyProxy {
    pub port: u16,
    pub cut: Arc<AtomicUsize>,
    /// Bytes forwarded from the server to the client.
    pub served: Arc<AtomicUsize>,
}

impl FlakyProxy {
    pub fn start(target: u16, cuts: usize, after: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let cut2 = cut.clone();
        let served2 = served.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { break };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let cut = cut2.clone();
                let served = served2.clone();
                let (mut c1, mut s1) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c1.read(&mut buf) {
                        if n == 0 || s1.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s1.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let (mut s2, mut c2) = (server, client);
                    let mut buf = [0u8; 16384];
                    let mut sent = 0usize;
                    while let Ok(n) = s2.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if sent + n > after && cut.load(Ordering::SeqCst) < cuts {
                            cut.fetch_add(1, Ordering::SeqCst);
                            let part = after.saturating_sub(sent);
                            served.fetch_add(part, Ordering::SeqCst);
                            let _ = c2.write_all(&buf[..part]);
                            let _ = c2.shutdown(std::net::Shutdown::Both);
                            let _ = s2.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        sent += n;
                        served.fetch_add(n, Ordering::SeqCst);
                        if c2.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { port, cut, served }
    }

    /// Answers the first `fails` connections with `503 Service Unavailable`.
    pub fn start_failing(target: u16, fails: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicUsize::new(0));
        let cut2 = cut.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { break };
                if cut2.load(Ordering::SeqCst) < fails {
                    cut2.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 4096];
                    let _ = client.read(&mut buf);
                    let _ = client.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (mut c1, mut s1) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c1, &mut s1);
                    let _ = s1.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let (mut s2, mut c2) = (server, client);
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self {
            port,
            cut,
            served: Arc::new(AtomicUsize::new(0)),
        }
    }
}

pub fn write_docker_config(dir: &Path, registry: &str, user: &str, pass: &str) {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(
        dir.join("config.json"),
        format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
}

pub fn tmp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// A layer for a hand-made OCI layout: (media type, blob bytes, diff-id).
pub struct OciLayer {
    pub media_type: &'static str,
    pub blob: Vec<u8>,
    pub diff_id: Digest,
}

impl OciLayer {
    pub fn gzip(tar: &[u8]) -> Self {
        Self {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
            blob: gzip(tar),
            diff_id: Digest::of_bytes(tar),
        }
    }
    pub fn zstd(tar: &[u8]) -> Self {
        Self {
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
            blob: zstd_compress(tar),
            diff_id: Digest::of_bytes(tar),
        }
    }
}

pub fn zstd_compress(data: &[u8]) -> Vec<u8> {
    let out = Command::new("zstd")
        .args(["-q", "-c", "-3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .expect("zstd");
    assert!(out.status.success());
    out.stdout
}

fn put_blob(dir: &Path, data: &[u8]) -> (Digest, u64) {
    let d = Digest::of_bytes(data);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(d.hex()), data).unwrap();
    (d, data.len() as u64)
}

/// Writes one image (manifest + config + layers) into an OCI layout directory and
/// returns (manifest digest, manifest size, config digest).
pub fn oci_image(dir: &Path, arch: &str, layers: &[OciLayer]) -> (Digest, u64, Digest) {
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "hand made"})).collect::<Vec<_>>(),
    });
    let config = serde_json::to_vec(&config).unwrap();
    let (cd, cs) = put_blob(dir, &config);
    let mut descs = Vec::new();
    for l in layers {
        let (d, s) = put_blob(dir, &l.blob);
        descs.push(
            serde_json::json!({"mediaType": l.media_type, "digest": d.to_string(), "size": s}),
        );
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cs},
        "layers": descs,
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let (md, ms) = put_blob(dir, &manifest);
    (md, ms, cd)
}

/// Writes `oci-layout` and an `index.json` tagging `manifests` as `tag`; with more
/// than one manifest, the entries go through a nested multi-platform index.
pub fn oci_index(dir: &Path, tag: &str, manifests: &[(Digest, u64, &str)]) -> Digest {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let entries: Vec<_> = manifests
        .iter()
        .map(|(d, s, arch)| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d.to_string(), "size": s,
                "platform": {"architecture": arch, "os": "linux"}})
        })
        .collect();
    let (top, media) = if entries.len() == 1 {
        (
            entries[0].clone(),
            "application/vnd.oci.image.manifest.v1+json",
        )
    } else {
        let idx = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
        let idx = serde_json::to_vec(&idx).unwrap();
        let (d, s) = put_blob(dir, &idx);
        (
            serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d.to_string(), "size": s}),
            "application/vnd.oci.image.index.v1+json",
        )
    };
    let _ = media;
    let mut top = top;
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    let digest = Digest::parse(top["digest"].as_str().unwrap()).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    digest
}

/// `skopeo copy` between two transports, TLS verification off for registries.
pub fn skopeo_copy(from: &str, to: &str, all: bool) {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy").arg("copy");
    if all {
        c.arg("--all");
    }
    c.args([
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        from,
        to,
    ]);
    run(&mut c);
}

/// A bcrypt htpasswd line (via python3's crypt, as Debian 12 ships no htpasswd).
pub fn htpasswd_line(user: &str, pass: &str) -> String {
    let out = run(Command::new("python3").args([
        "-W",
        "ignore",
        "-c",
        &format!("import crypt; print(crypt.crypt({pass:?}, crypt.mksalt(crypt.METHOD_BLOWFISH)))"),
    ]));
    format!("{user}:{}", out.trim())
}

/// A self-signed certificate for 127.0.0.1: (cert, key).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        k.to_str().unwrap(),
        "-out",
        c.to_str().unwrap(),
    ]));
    (c, k)
}

/// A private `dockerd` (Debian's 20.10) on its own socket, data and exec roots.
pub struct Dockerd {
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Dockerd {
    /// Starts dockerd; `None` (after a skip or panic per `MOAT_E2E_REQUIRED`) if
    /// it cannot run here, with its log in the message.
    pub fn start(insecure_registry: Option<&str>) -> Option<Self> {
        let dir = tempfile::Builder::new()
            .prefix("md")
            .tempdir_in("/tmp")
            .unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let mut cmd = Command::new("dockerd");
        cmd.arg("-H")
            .arg(format!("unix://{}", dir.path().join("d.sock").display()))
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("x"))
            .arg("--pidfile")
            .arg(dir.path().join("pid"))
            .args(["--bridge=none", "--iptables=false"]);
        if let Some(r) = insecure_registry {
            cmd.arg("--insecure-registry").arg(r);
        }
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let d = Self { dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if d.docker()
                .arg("version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return Some(d);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(d.dir.path().join("dockerd.log")).unwrap_or_default();
        skip(&format!("dockerd did not start; its log:\n{log}"));
        None
    }

    /// The docker CLI pointed at this daemon (Debian's 20.10 CLI).
    pub fn docker(&self) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.arg("-H").arg(format!(
            "unix://{}",
            self.dir.path().join("d.sock").display()
        ));
        c.env("DOCKER_CONFIG", self.dir.path().join("cli"));
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its containerd; SIGKILL only as a last resort.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token server for the registry's `auth.token` scheme: it issues RS256 JWTs
/// (signed with `openssl dgst`, certificate in `x5c`) granting the requested
/// actions to `user:pass` and nothing to anyone else.
pub struct TokenServer {
    pub port: u16,
    pub cert: PathBuf,
    pub issued: Arc<AtomicUsize>,
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?');
                out.push(h);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TokenServer {
    pub fn start(dir: &Path, service: &str, user: &str, pass: &str) -> Self {
        use base64::Engine as _;
        let (cert, key) = (dir.join("token-cert.pem"), dir.join("token-key.pem"));
        run(Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=moat-test-token",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in", cert.to_str().unwrap()])
            .output()
            .unwrap()
            .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let issued = Arc::new(AtomicUsize::new(0));
        let issued2 = issued.clone();
        let (service, expect) = (
            service.to_owned(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            ),
        );
        let work = dir.to_owned();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { break };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req).into_owned();
                let line = req.lines().next().unwrap_or("");
                let path = line.split(' ').nth(1).unwrap_or("");
                let query = path.split_once('?').map(|x| x.1).unwrap_or("");
                let authorized = req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:") && l[14..].trim() == expect
                });
                let mut access = Vec::new();
                for kv in query.split('&') {
                    if let Some(scope) = kv.strip_prefix("scope=") {
                        let scope = url_decode(scope);
                        let parts: Vec<&str> = scope.splitn(3, ':').collect();
                        if parts.len() == 3 && authorized {
                            access.push(serde_json::json!({
                                "type": parts[0], "name": parts[1],
                                "actions": parts[2].split(',').collect::<Vec<_>>()
                            }));
                        }
                    }
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
                let n = issued2.fetch_add(1, Ordering::SeqCst);
                let claims = serde_json::json!({
                    "iss": "moat-test-issuer", "sub": if authorized { "alice" } else { "" },
                    "aud": service, "exp": now + 300, "nbf": now - 10, "iat": now,
                    "jti": format!("t{n}"), "access": access,
                });
                let signing_input = format!(
                    "{}.{}",
                    b64url(&serde_json::to_vec(&header).unwrap()),
                    b64url(&serde_json::to_vec(&claims).unwrap())
                );
                let input_file = work.join(format!("jwt-{n}"));
                std::fs::write(&input_file, &signing_input).unwrap();
                let sig = Command::new("openssl")
                    .args(["dgst", "-sha256", "-sign"])
                    .arg(work.join("token-key.pem"))
                    .arg(&input_file)
                    .output()
                    .unwrap()
                    .stdout;
                let jwt = format!("{signing_input}.{}", b64url(&sig));
                let body = serde_json::to_vec(
                    &serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300}),
                )
                .unwrap();
                let _ = c.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                        .as_bytes(),
                );
                let _ = c.write_all(&body);
            }
        });
        Self { port, cert, issued }
    }

    /// The registry config section that trusts this server.
    pub fn registry_config(&self, service: &str) -> String {
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {service}\n    issuer: moat-test-issuer\n    rootcertbundle: {}\n",
            self.port,
            self.cert.display()
        )
    }
}
