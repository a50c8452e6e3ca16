//! Unit tests for the store: layout, locking, blobs, records, remove/prune/gc,
//! reference counts, crash leftovers and the Engine API views.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::build::ImageBuilder;
use crate::inspect;
use crate::reference::ImageRef;

fn opts() -> StoreOptions {
    StoreOptions {
        durable: false,
        ..StoreOptions::default()
    }
}

pub(crate) fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn image(store: &Store, layers: &[Vec<u8>], tag: Option<&str>) -> Digest {
    let mut b = ImageBuilder::new(store);
    for (i, l) in layers.iter().enumerate() {
        b.add_layer(store, &gzip(l)[..], &format!("layer {i}"), None)
            .unwrap();
    }
    b.add_empty_step("CMD [\"sh\"]");
    let tags: Vec<ImageRef> = tag
        .into_iter()
        .map(|t| ImageRef::parse(t).unwrap())
        .collect();
    b.commit(store, &tags).unwrap()
}

fn none() -> HashSet<Digest> {
    HashSet::new()
}

#[test]
fn open_creates_private_layout_and_locks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let s = Store::open(&root, opts()).unwrap();
    assert_eq!(
        fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for d in ["blobs/sha256", "layers/sha256", "layers/meta", "tmp"] {
        assert!(root.join(d).is_dir(), "{d}");
    }
    assert!(matches!(
        Store::open(&root, opts()),
        Err(StoreError::Locked(_))
    ));
    drop(s);
    Store::open(&root, opts()).unwrap();
}

#[test]
fn blobs_are_verified_while_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let mut lease = s.lease();
    let d = s.put_blob(b"hello", &mut lease).unwrap();
    assert_eq!(s.read_blob(&d, 100).unwrap(), b"hello");
    assert!(s.read_blob(&d, 2).is_err());

    // Wrong digest: error, nothing stored, no temp file left.
    let wrong = Digest::of_bytes(b"other");
    let mut w = s.blob_writer(Some(&wrong), None).unwrap();
    w.write_all(b"content").unwrap();
    assert!(matches!(
        w.commit(&mut lease),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(!s.has_blob(&wrong));
    assert!(!s.has_blob(&Digest::of_bytes(b"content")));
    assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);

    // More bytes than the descriptor says: refused while writing.
    let mut w = s.blob_writer(None, Some(4)).unwrap();
    assert!(w.write_all(b"12345").is_err());
    // A descriptor claiming more than the store's cap does not lift the cap.
    let small = Store::open(
        &dir.path().join("small"),
        StoreOptions {
            durable: false,
            limits: crate::unpack::UnpackLimits {
                max_total_bytes: 8,
                ..Default::default()
            },
        },
    )
    .unwrap();
    let mut w = small.blob_writer(None, Some(1 << 40)).unwrap();
    assert!(w.write_all(b"123456789").is_err());
    // Fewer: refused at commit.
    let mut w = s.blob_writer(None, Some(10)).unwrap();
    w.write_all(b"12345").unwrap();
    assert!(matches!(
        w.commit(&mut lease),
        Err(StoreError::SizeMismatch { .. })
    ));

    // A blob corrupted on disk is caught when read back.
    fs::write(s.blob_path(&d), b"jello").unwrap();
    assert!(matches!(
        s.read_blob(&d, 100),
        Err(StoreError::DigestMismatch { .. })
    ));
}

#[test]
fn records_survive_reopen_and_resolve_like_docker() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let s = Store::open(dir.path(), opts()).unwrap();
        image(&s, &[tar_of(&[("a", b"1")])], Some("busybox"))
    };
    let s = Store::open(dir.path(), opts()).unwrap();
    for name in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        &id.to_string(),
        id.hex(),
        &id.hex()[..12],
        &format!("sha256:{}", &id.hex()[..8]),
    ] {
        assert_eq!(s.resolve(name).unwrap(), id, "{name}");
    }
    assert!(matches!(
        s.resolve("busybox:other"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(s.resolve("zzz"), Err(StoreError::NotFound(_))));
    assert!(matches!(s.resolve(""), Err(StoreError::NotFound(_))));
    let dirs = s.layer_dirs("busybox").unwrap();
    assert_eq!(dirs.len(), 1);
    assert_eq!(fs::read(dirs[0].join("a")).unwrap(), b"1");
}

#[test]
fn ambiguous_short_ids() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(image(
            &s,
            &[tar_of(&[("f", format!("{i}").as_bytes())])],
            None,
        ));
    }
    // Among 40 ids two share a first hex digit.
    let first = ids[0].hex()[..1].to_owned();
    let same = ids.iter().filter(|d| d.hex().starts_with(&first)).count();
    if same > 1 {
        assert!(matches!(s.resolve(&first), Err(StoreError::Ambiguous(_))));
    }
}

#[test]
fn repo_digests_resolve_and_untag_with_their_tag() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let id = image(&s, &[tar_of(&[("a", b"1")])], Some("h:5000/app:v1"));
    let m = Digest::of_bytes(b"manifest");
    let r = ImageRef::parse("h:5000/app").unwrap().with_digest(&m);
    s.add_repo_digest(&id, &r).unwrap();
    assert_eq!(s.resolve(&format!("h:5000/app@{m}")).unwrap(), id);
    let out = s.remove("h:5000/app:v1", false, &none()).unwrap();
    let untagged: Vec<_> = out.iter().filter_map(|i| i.untagged.clone()).collect();
    assert_eq!(
        untagged,
        vec!["h:5000/app:v1".to_owned(), format!("h:5000/app@{m}")]
    );
    assert!(out
        .iter()
        .any(|i| i.deleted.as_deref() == Some(&id.to_string())));
    assert!(s.images().is_empty());
}

#[test]
fn remove_untags_then_deletes_and_collects_layers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let base = tar_of(&[("base", b"b")]);
    let id = image(&s, &[base.clone(), tar_of(&[("top", b"t")])], Some("app:1"));
    s.tag("app:1", "app:2").unwrap();
    let other = image(&s, std::slice::from_ref(&base), Some("other"));
    let base_diff = Digest::of_bytes(&base);
    assert_eq!(s.layer_refcounts()[&base_diff], 2);

    // One of two tags: untag only.
    let out = s.remove("app:1", false, &none()).unwrap();
    assert_eq!(out, vec![inspect::DeleteItem::untagged("app:1")]);
    assert_eq!(s.resolve("app:2").unwrap(), id);

    // Last tag: image deleted, its own layer collected, the shared one kept.
    let img = s.get(&id).unwrap();
    let top_diff = img.layers[1].diff_id.clone();
    let out = s.remove("app:2", false, &none()).unwrap();
    assert!(out.contains(&inspect::DeleteItem::deleted(id.to_string())));
    assert!(out.contains(&inspect::DeleteItem::deleted(top_diff.to_string())));
    assert!(!s.has_layer(&top_diff));
    assert!(!s.layer_path(&top_diff).exists());
    assert!(s.has_layer(&base_diff));
    assert!(!s.has_blob(&img.manifest));
    assert!(!s.has_blob(&img.layers[1].blob));
    assert!(s.has_blob(&img.layers[0].blob));
    assert_eq!(s.layer_refcounts()[&base_diff], 1);
    assert_eq!(s.resolve("other").unwrap(), other);
}

#[test]
fn remove_by_id_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let id = image(&s, &[tar_of(&[("a", b"1")])], Some("one"));
    s.tag("one", "two").unwrap();
    let e = s.remove(id.hex(), false, &none()).unwrap_err();
    assert!(
        e.to_string()
            .contains("referenced in multiple repositories"),
        "{e}"
    );
    let out = s.remove(id.hex(), true, &none()).unwrap();
    assert_eq!(out.iter().filter(|i| i.untagged.is_some()).count(), 2);
    assert!(s.images().is_empty());
}

#[test]
fn images_in_use_are_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let id = image(&s, &[tar_of(&[("a", b"1")])], Some("busy"));
    let used: HashSet<Digest> = [id.clone()].into();
    let e = s.remove("busy", false, &used).unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let e = s.remove(id.hex(), false, &used).unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    // Forced: untagged, kept (its layers are in a guest).
    let out = s.remove("busy", true, &used).unwrap();
    assert_eq!(out, vec![inspect::DeleteItem::untagged("busy:latest")]);
    assert!(s.get(&id).is_ok());
    let report = s.prune(true, &used).unwrap();
    assert!(report.images_deleted.is_empty());
    assert_eq!(s.layer_dirs(id.hex()).unwrap().len(), 1);
    // No longer used: prune takes it.
    let report = s.prune(false, &none()).unwrap();
    assert!(report
        .images_deleted
        .contains(&inspect::DeleteItem::deleted(id.to_string())));
    assert!(report.space_reclaimed > 0);
    assert!(s.images().is_empty());
}

#[test]
fn prune_dangling_only_unless_all() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let dangling = image(&s, &[tar_of(&[("d", b"1")])], None);
    let tagged = image(&s, &[tar_of(&[("t", b"2")])], Some("keep"));
    let r = s.prune(false, &none()).unwrap();
    assert_eq!(
        r.images_deleted
            .iter()
            .filter(|i| i.deleted.as_deref() == Some(&dangling.to_string()))
            .count(),
        1
    );
    assert!(s.get(&tagged).is_ok());
    s.prune(true, &none()).unwrap();
    assert!(s.images().is_empty());
    assert_eq!(
        fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(),
        0
    );
    assert_eq!(
        fs::read_dir(s.root().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        fs::read_dir(s.root().join("layers/meta")).unwrap().count(),
        0
    );
}

#[test]
fn gc_respects_leases_and_removes_crash_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let mut lease = s.lease();
    let leased = s.put_blob(b"in flight", &mut lease).unwrap();
    let orphan = {
        let mut l2 = s.lease();
        s.put_blob(b"orphan", &mut l2).unwrap()
    };
    let r = s.gc().unwrap();
    assert_eq!(r.blobs, vec![orphan.clone()]);
    assert!(s.has_blob(&leased));
    drop(lease);
    s.gc().unwrap();
    assert!(!s.has_blob(&leased));

    // Crash leftovers: temp files, a layer metadata file without its layer.
    fs::write(s.tmp_dir().join("blob-crashed"), b"x").unwrap();
    fs::create_dir(s.tmp_dir().join("layer-crashed")).unwrap();
    let meta = s
        .root()
        .join("layers/meta")
        .join(format!("{}.json", orphan.hex()));
    fs::write(&meta, b"{}").unwrap();
    let root = s.root().to_owned();
    drop(s);
    let s = Store::open(&root, opts()).unwrap();
    assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    s.gc().unwrap();
    assert!(!meta.exists());
}

#[test]
fn corrupt_db_is_an_error_not_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), opts()).unwrap();
        image(&s, &[tar_of(&[("a", b"1")])], Some("x"));
    }
    fs::write(dir.path().join("db.json"), b"{\"version\":1,\"images\":{").unwrap();
    assert!(matches!(
        Store::open(dir.path(), opts()),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn failed_layer_ingest_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let mut lease = s.lease();
    let tar = tar_of(&[("a", b"1")]);
    let wrong = Digest::of_bytes(b"nope");
    let r = s.ingest_layer(
        &tar[..],
        Some(crate::media::OCI_LAYER_TAR),
        None,
        Some(&wrong),
        &mut lease,
    );
    assert!(matches!(r, Err(StoreError::Unpack { .. })), "{r:?}");
    let blob = Digest::of_bytes(&tar);
    let r = s.ingest_layer(
        &tar[..],
        None,
        Some((&wrong, tar.len() as u64)),
        None,
        &mut lease,
    );
    assert!(matches!(r, Err(StoreError::DigestMismatch { .. })), "{r:?}");
    assert!(!s.has_blob(&blob));
    assert_eq!(
        fs::read_dir(s.root().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    let ok = s
        .ingest_layer(
            &tar[..],
            None,
            Some((&blob, tar.len() as u64)),
            Some(&blob),
            &mut lease,
        )
        .unwrap();
    assert_eq!(ok.info.diff_id, blob);
    assert!(s.has_layer(&blob));
}

#[test]
fn inspect_and_history_look_like_docker() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let rc: crate::manifest::RunConfig =
        serde_json::from_str(r#"{"Env":["PATH=/bin"],"Cmd":["sh"]}"#).unwrap();
    let mut b = ImageBuilder::new(&s).run_config(rc).comment("imported");
    b.add_layer(&s, &tar_of(&[("a", b"12345")])[..], "ADD a /", None)
        .unwrap();
    b.add_empty_step("CMD [\"sh\"]");
    b.add_layer(&s, &tar_of(&[("b", b"12")])[..], "ADD b /", None)
        .unwrap();
    let id = b.commit(&s, &[ImageRef::parse("demo:1").unwrap()]).unwrap();
    let i = s.inspect("demo:1").unwrap();
    assert_eq!(i.id, id.to_string());
    assert_eq!(i.repo_tags, vec!["demo:1"]);
    assert_eq!(i.size, 7);
    assert_eq!(i.os, "linux");
    assert_eq!(i.comment, "imported");
    assert_eq!(i.config.cmd, Some(vec!["sh".to_owned()]));
    assert_eq!(i.root_fs.layers.len(), 2);
    let h = s.history("demo:1").unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(h[0].id, id.to_string());
    assert_eq!(h[0].created_by, "ADD b /");
    assert_eq!(h[0].size, 2);
    assert_eq!(h[0].tags, Some(vec!["demo:1".to_owned()]));
    assert_eq!(h[1].id, "<missing>");
    assert_eq!(h[1].size, 0);
    assert_eq!(h[2].size, 5);
    let list = s.summaries().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].size, 7);
}

#[test]
fn blocking_and_async_lockers_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(dir.path(), opts()).unwrap());
    let g = s.lock_key_blocking("k");
    let s2 = s.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        // Inside a runtime a blocking lock must block, not panic.
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { drop(s2.lock_key_blocking("k")) });
        start.elapsed()
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    drop(g);
    assert!(t.join().unwrap() >= std::time::Duration::from_millis(40));
    let g = s.lock_key_blocking("k");
    let s3 = s.clone();
    let waiter = std::thread::spawn(move || rt.block_on(async { drop(s3.lock_key("k").await) }));
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(!waiter.is_finished());
    drop(g);
    waiter.join().unwrap();
    assert!(s.locks.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_locks_serialize_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(dir.path(), opts()).unwrap());
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let max = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, active, max) = (s.clone(), active.clone(), max.clone());
        tasks.push(tokio::spawn(async move {
            let _g = s.lock_key("blob:x").await;
            let n = active.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            max.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(max.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(s.locks.is_empty(), "lock entries are cleaned up");
}
