//! Crash safety: a pull in a child process is killed with SIGKILL at various
//! points; reopening the store must show no half state (no partial layer, no
//! temp files, records only for complete images) and a second pull must succeed.

mod images_support;

use std::process::{Command, Stdio};

use images_support::*;
use moat_images::build::ImageBuilder;
use moat_images::registry::{PullOptions, PushOptions, Registry, RegistryConfig};
use moat_images::store::{Store, StoreOptions};
use moat_images::ImageRef;

const CHILD_ENV: &str = "MOAT_CRASH_CHILD";

fn client() -> Registry {
    Registry::new(RegistryConfig {
        docker_config_dir: Some("/nonexistent".into()),
        ..RegistryConfig::default()
    })
}

/// Run only as the child of `pull_killed_at_any_point_leaves_no_half_state`.
#[tokio::test]
#[ignore = "child process of the crash test"]
async fn crash_child_pull() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, name) = spec.split_once('|').unwrap();
    let s = std::sync::Arc::new(
        Store::open(std::path::Path::new(dir), StoreOptions::default()).unwrap(),
    );
    println!("ready");
    let progress = moat_images::registry::Progress::callback(|e| println!("event {}", e.phase));
    client()
        .pull(
            &s,
            name,
            &PullOptions {
                progress,
                ..PullOptions::default()
            },
        )
        .await
        .unwrap();
    println!("done");
}

fn random_layer(seed: u64, mib: usize) -> Vec<u8> {
    let mut x = seed * 2 + 1;
    let mut data = vec![0u8; mib << 20];
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    tar_layer(&[E::File("data.bin", &data, 0o644)])
}

fn check_consistent(s: &Store) {
    // No temp leftovers after open.
    assert_eq!(std::fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    // Every layer directory present is complete: it has its metadata, and its
    // files hold all the bytes the unpack recorded.
    for e in std::fs::read_dir(s.root().join("layers/sha256")).unwrap() {
        let e = e.unwrap();
        let d = moat_images::Digest::from_hex(e.file_name().to_str().unwrap()).unwrap();
        let info = s.layer_info(&d).expect("a visible layer has its metadata");
        let mut inodes = std::collections::HashSet::new();
        let mut bytes = 0u64;
        for p in walk(&e.path()) {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_file() && inodes.insert(m.ino()) {
                bytes += m.len();
            }
        }
        assert_eq!(bytes, info.size, "layer {d} is complete");
    }
    // Every recorded image is whole.
    for img in s.images() {
        for b in img.blobs() {
            assert!(s.has_blob(b), "image {} misses blob {b}", img.id);
        }
        assert!(s.layer_dirs(img.id.hex()).is_ok());
    }
    // Every blob present matches its name.
    for e in std::fs::read_dir(s.root().join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            moat_images::Digest::of_bytes(&data).hex(),
            e.file_name().to_str().unwrap()
        );
    }
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_killed_at_any_point_leaves_no_half_state() {
    if !(root() && have(&["/usr/bin/docker-registry", "/bin/busybox"])) {
        return;
    }
    let reg = RegistryProc::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let name = format!("{}/crash/img:1", reg.host());
    let mut b = ImageBuilder::new(&a);
    for i in 0..4 {
        b.add_layer(&a, &random_layer(i + 1, 4)[..], "layer", None)
            .unwrap();
    }
    b.add_layer(&a, &gzip(&busybox_layers()[0])[..], "busybox", None)
        .unwrap();
    let id = b.commit(&a, &[ImageRef::parse(&name).unwrap()]).unwrap();
    client()
        .push(&a, &name, &PushOptions::default())
        .await
        .unwrap();

    // Kill points: after the n-th line containing a marker in the child's output.
    let points = [
        ("ready", 1),
        ("event Downloading", 1),
        ("event Downloading", 15),
        ("event Extracting", 1),
        ("event Pull complete", 1),
        ("event Pull complete", 3),
        ("event Pull complete", 5),
        ("done", 1),
    ];
    let exe = std::env::current_exe().unwrap();
    for (i, (marker, nth)) in points.into_iter().enumerate() {
        let dir = tmp.path().join(format!("s{i}"));
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child_pull",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}|{name}", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        for line in std::io::BufRead::lines(out) {
            let Ok(line) = line else { break };
            if line.contains(marker) {
                seen += 1;
                if seen == nth {
                    break;
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();

        let s = store(&dir);
        check_consistent(&s);
        let complete = s.images().iter().any(|im| im.id == id);
        let layers_before = std::fs::read_dir(s.root().join("layers/sha256"))
            .unwrap()
            .count();
        // Finish the job: the second pull must succeed whatever the first left.
        let p = client()
            .pull(&s, &name, &PullOptions::default())
            .await
            .unwrap();
        assert_eq!(p.id, id);
        check_consistent(&s);
        s.gc().unwrap();
        check_consistent(&s);
        assert_eq!(s.layer_dirs(&name).unwrap().len(), 5);
        eprintln!(
            "killed at {marker:?} #{nth}: {layers_before}/5 layers visible, image {}complete",
            if complete { "" } else { "in" }
        );
    }
}
