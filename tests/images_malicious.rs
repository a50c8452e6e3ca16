//! Hostile layer tarballs through the public API (`docker import` and `docker
//! load` paths): each is refused with a clear error, nothing is recorded, the
//! store keeps no partial content, and a canary outside the store is untouched.

mod images_support;

use std::fs;
use std::path::Path;

use images_support::*;
use moat_images::archive::{self, ImportOptions};
use moat_images::store::Store;
use moat_images::Digest;

/// Raw tar with names the `tar` crate refuses to write.
fn raw_tar(entries: &[(u8, &str, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, name, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..name.len()].copy_from_slice(name.as_bytes());
            g.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(tar::EntryType::new(*kind));
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        if *kind == b'3' {
            h.set_device_major(1).unwrap();
            h.set_device_minor(1).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

struct Canary {
    dir: tempfile::TempDir,
}

impl Canary {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), b"canary").unwrap();
        Self { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn check(&self) {
        assert_eq!(fs::read(self.dir.path().join("file")).unwrap(), b"canary");
        assert_eq!(fs::read_dir(self.dir.path()).unwrap().count(), 1);
    }
}

fn assert_clean(s: &Store) {
    assert!(s.images().is_empty());
    assert_eq!(
        fs::read_dir(s.root().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    s.gc().unwrap();
    assert_eq!(
        fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(),
        0
    );
}

fn import_err(s: &Store, tar: &[u8]) -> String {
    archive::import_rootfs(s, tar, &ImportOptions::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn hostile_tars_are_refused_and_the_host_is_untouched() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = store(&tmp.path().join("s"));
    let canary = Canary::new();
    let c = canary.path().to_str().unwrap().to_owned();
    let rel = format!("../../../../../../..{c}");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            raw_tar(&[(b'0', &format!("{rel}/file"), "", b"pwned")]),
            "\"..\" component",
        ),
        (
            "absolute",
            raw_tar(&[(b'0', &format!("{c}/file"), "", b"pwned")]),
            "absolute path",
        ),
        (
            "symlink escape then write",
            raw_tar(&[(b'2', "esc", &c, b""), (b'0', "esc/file", "", b"pwned")]),
            "traverses a symlink",
        ),
        (
            "relative symlink escape then new file",
            raw_tar(&[(b'2', "up", &rel, b""), (b'0', "up/new", "", b"pwned")]),
            "traverses a symlink",
        ),
        (
            "hardlink to /etc/passwd",
            raw_tar(&[(b'1', "passwd", "/etc/passwd", b"")]),
            "hardlink target outside",
        ),
        (
            "hardlink through a symlink",
            raw_tar(&[
                (b'2', "etc", "/etc", b""),
                (b'1', "passwd", "etc/passwd", b""),
            ]),
            "traverses a symlink",
        ),
        (
            "device node",
            raw_tar(&[(b'3', "dev/mem", "", b"")]),
            "device node",
        ),
    ];
    for (what, tar, expect) in cases {
        let e = import_err(&s, &tar);
        assert!(e.contains(expect), "{what}: {e}");
        canary.check();
        assert!(fs::metadata("/etc/passwd").unwrap().len() > 0);
        assert_clean(&s);
    }
    // A truncated tar (cut inside a file's data).
    let good = raw_tar(&[(b'0', "big", "", &vec![7u8; 10_000])]);
    let e = import_err(&s, &good[..4000]);
    assert!(e.contains("truncated"), "{e}");
    assert_clean(&s);
    // Truncated gzip.
    let gz = gzip(&good);
    assert!(archive::import_rootfs(&s, &gz[..gz.len() / 2], &ImportOptions::default()).is_err());
    assert_clean(&s);
}

#[test]
fn wrong_diff_id_in_a_docker_archive_is_refused() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = store(&tmp.path().join("s"));
    let layer = raw_tar(&[(b'0', "a", "", b"real content")]);
    let claimed = Digest::of_bytes(b"something else");
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [claimed.to_string()]}
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("c.json", config.clone()),
        ("l/layer.tar", layer),
        (
            "manifest.json",
            serde_json::to_vec(&serde_json::json!([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}])).unwrap(),
        ),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let e = archive::load(&s, &b.into_inner().unwrap()[..])
        .unwrap_err()
        .to_string();
    assert!(e.contains("diff-id mismatch"), "{e}");
    assert_clean(&s);
}
