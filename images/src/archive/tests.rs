//! Unit tests for archives: save/load round trips, OCI layouts, import, and
//! hostile archives.

use std::fs;
use std::io::Write;

use super::*;
use crate::build::ImageBuilder;
use crate::store::StoreOptions;

fn store(dir: &Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            durable: false,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn image(s: &Store, layers: &[Vec<u8>], tag: &str) -> Digest {
    let mut b = ImageBuilder::new(s);
    for l in layers {
        b.add_layer(s, &gz(l)[..], "x", None).unwrap();
    }
    b.commit(s, &[ImageRef::parse(tag).unwrap()]).unwrap()
}

/// Lists a tar's entry names.
fn names(archive: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(archive);
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn save_load_roundtrip_keeps_ids_tags_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"));
    let base = tar_of(&[("base", b"b")]);
    let id1 = image(&a, &[base.clone(), tar_of(&[("one", b"1")])], "app:1");
    let id2 = image(&a, &[base.clone(), tar_of(&[("two", b"2")])], "other/app:2");
    let mut out = Vec::new();
    save(&a, &["app:1", "other/app:2"], &mut out).unwrap();
    let n = names(&out);
    assert!(n.contains(&"manifest.json".to_owned()));
    assert!(n.contains(&"repositories".to_owned()));
    assert!(n.contains(&format!("{}.json", id1.hex())));
    // Shared base layer written once: 3 layer.tar files for 4 layer uses.
    assert_eq!(n.iter().filter(|p| p.ends_with("/layer.tar")).count(), 3);
    let m: serde_json::Value = serde_json::from_slice(&read_entry(&out, "manifest.json")).unwrap();
    assert_eq!(m[0]["RepoTags"][0], "app:1");
    assert_eq!(m[1]["RepoTags"][0], "other/app:2");
    let repos: serde_json::Value =
        serde_json::from_slice(&read_entry(&out, "repositories")).unwrap();
    assert!(repos["other/app"]["2"].is_string());

    let b = store(&dir.path().join("b"));
    let loaded = load(&b, &out[..]).unwrap();
    assert_eq!(
        loaded.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        vec![id1.clone(), id2.clone()]
    );
    assert_eq!(b.resolve("app:1").unwrap(), id1);
    assert_eq!(b.resolve("other/app:2").unwrap(), id2);
    let dirs = b.layer_dirs("app:1").unwrap();
    assert_eq!(fs::read(dirs[1].join("one")).unwrap(), b"1");
    // Loaded layers are stored uncompressed: their blob digest is the diff-id.
    let rec = b.get(&id1).unwrap();
    assert_eq!(rec.layers[0].blob, rec.layers[0].diff_id);

    // Saved again from b: byte-identical layer content, same IDs.
    let mut again = Vec::new();
    save(&b, &["app:1"], &mut again).unwrap();
    let c = store(&dir.path().join("c"));
    assert_eq!(load(&c, &gz(&again)[..]).unwrap()[0].id, id1);
}

fn read_entry(archive: &[u8], want: &str) -> Vec<u8> {
    let mut a = tar::Archive::new(archive);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().display().to_string() == want {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            return v;
        }
    }
    panic!("{want} not in archive");
}

/// Builds a Docker archive by hand: `layers` are (path, content) pairs, `links`
/// symlinks (path, target), plus manifest.json and the config.
fn docker_archive(
    config: &[u8],
    layers: &[(&str, Vec<u8>)],
    links: &[(&str, &str)],
    manifest_layers: &[&str],
) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let cfg_name = format!("{}.json", Digest::of_bytes(config).hex());
    let mut h = tar::Header::new_gnu();
    h.set_size(config.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, &cfg_name, config).unwrap();
    // Names are written raw: the tar crate refuses the hostile ones.
    let raw = |name: &str, link: &str, kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_gnu();
        let g = h.as_gnu_mut().unwrap();
        g.name[..name.len()].copy_from_slice(name.as_bytes());
        g.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    };
    for (p, d) in layers {
        b.append(&raw(p, "", tar::EntryType::Regular, d.len() as u64), &d[..])
            .unwrap();
    }
    for (p, t) in links {
        b.append(&raw(p, t, tar::EntryType::Symlink, 0), &[][..])
            .unwrap();
    }
    let m = serde_json::json!([{"Config": cfg_name, "RepoTags": ["hand:made"], "Layers": manifest_layers}]);
    let m = serde_json::to_vec(&m).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(m.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "manifest.json", &m[..]).unwrap();
    b.into_inner().unwrap()
}

fn config_for(diffs: &[&Digest]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diffs.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        "config": {"Cmd": ["sh"]}
    }))
    .unwrap()
}

#[test]
fn loads_legacy_archives_with_symlinked_layers() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let l = tar_of(&[("f", b"x")]);
    let d = Digest::of_bytes(&l);
    let cfg = config_for(&[&d, &d]);
    let arch = docker_archive(
        &cfg,
        &[("aaa/layer.tar", l.clone())],
        &[("bbb/layer.tar", "../aaa/layer.tar")],
        &["aaa/layer.tar", "bbb/layer.tar"],
    );
    let loaded = load(&s, &arch[..]).unwrap();
    assert_eq!(loaded[0].id, Digest::of_bytes(&cfg));
    assert_eq!(s.layer_dirs("hand:made").unwrap().len(), 2);
}

#[test]
fn refuses_hostile_archives_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir.path().join("s"));
    let l = tar_of(&[("f", b"x")]);
    let d = Digest::of_bytes(&l);
    let cfg = config_for(&[&d]);

    // A layer path with "..".
    let arch = docker_archive(
        &cfg,
        &[("../evil/layer.tar", l.clone())],
        &[],
        &["../evil/layer.tar"],
    );
    let e = load(&s, &arch[..]).unwrap_err();
    assert!(e.to_string().contains(".."), "{e}");
    // A symlink leaving the archive.
    let arch = docker_archive(
        &cfg,
        &[],
        &[("a/layer.tar", "../../../etc/passwd")],
        &["a/layer.tar"],
    );
    let e = load(&s, &arch[..]).unwrap_err();
    assert!(e.to_string().contains("leaves the archive"), "{e}");
    // A layer that does not match the config's diff-id.
    let other = tar_of(&[("f", b"tampered")]);
    let arch = docker_archive(&cfg, &[("a/layer.tar", other)], &[], &["a/layer.tar"]);
    let e = load(&s, &arch[..]).unwrap_err();
    assert!(e.to_string().contains("diff-id mismatch"), "{e}");
    // A missing file.
    let arch = docker_archive(&cfg, &[], &[], &["nope/layer.tar"]);
    assert!(load(&s, &arch[..]).is_err());
    // Not an archive.
    assert!(load(&s, &b"garbage garbage garbage"[..]).is_err());
    // A malicious layer inside a well-formed archive.
    let mut evil = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    evil.append_link(&mut h, "ln", dir.path()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    evil.append_data(&mut h, "ln/pwned", &b"pwned"[..]).unwrap();
    let evil = evil.into_inner().unwrap();
    let ed = Digest::of_bytes(&evil);
    let arch = docker_archive(
        &config_for(&[&ed]),
        &[("e/layer.tar", evil)],
        &[],
        &["e/layer.tar"],
    );
    let e = load(&s, &arch[..]).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    assert!(!dir.path().join("pwned").exists());

    assert!(s.images().is_empty());
    assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(s.root().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn oci_layout_roundtrip_keeps_manifest_digest() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"));
    let id = image(
        &a,
        &[tar_of(&[("f", b"1")]), tar_of(&[("g", b"2")])],
        "reg.example/app:v1",
    );
    let layout = dir.path().join("layout");
    export_oci_dir(&a, &["reg.example/app:v1"], &layout).unwrap();
    assert!(layout.join("oci-layout").is_file());
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        idx["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
    assert_eq!(
        idx["manifests"][0]["annotations"]["io.containerd.image.name"],
        "reg.example/app:v1"
    );
    let b = store(&dir.path().join("b"));
    let loaded = import_oci_dir(&b, &layout, None).unwrap();
    assert_eq!(loaded[0].id, id);
    assert_eq!(b.get(&id).unwrap().manifest, a.get(&id).unwrap().manifest);
    assert_eq!(b.resolve("reg.example/app:v1").unwrap(), id);

    // As a tarball, through `load`.
    let mut t = Vec::new();
    export_oci_tar(&a, &["reg.example/app:v1"], &mut t).unwrap();
    let c = store(&dir.path().join("c"));
    assert_eq!(load(&c, &t[..]).unwrap()[0].id, id);

    // A layout with only a ref.name tag and a caller-given repository.
    let mut v: serde_json::Value = idx.clone();
    v["manifests"][0]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("io.containerd.image.name");
    fs::write(layout.join("index.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    let d = store(&dir.path().join("d"));
    import_oci_dir(&d, &layout, Some("local/app")).unwrap();
    assert_eq!(d.resolve("local/app:v1").unwrap(), id);

    // A tampered blob is caught.
    let m = a.get(&id).unwrap();
    fs::write(
        layout.join("blobs/sha256").join(m.layers[1].blob.hex()),
        b"tampered",
    )
    .unwrap();
    let e = store(&dir.path().join("e"));
    assert!(import_oci_dir(&e, &layout, None).is_err());
    assert!(e.images().is_empty());
}

#[test]
fn import_rootfs_makes_one_layer_image() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let rootfs = tar_of(&[("bin/x", b"x"), ("etc/y", b"yy")]);
    let id = import_rootfs(
        &s,
        &gz(&rootfs)[..],
        &ImportOptions {
            tag: Some(ImageRef::parse("imported:1").unwrap()),
            message: Some("hello".into()),
            ..ImportOptions::default()
        },
    )
    .unwrap();
    let i = s.inspect("imported:1").unwrap();
    assert_eq!(i.id, id.to_string());
    assert_eq!(i.comment, "hello");
    assert_eq!(
        i.root_fs.layers,
        vec![Digest::of_bytes(&rootfs).to_string()]
    );
    let h = s.history("imported:1").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].comment, "Imported from -");
    assert_eq!(h[0].size, 3);
}
