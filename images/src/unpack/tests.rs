//! Unit tests for layer unpack: formats, overlayfs conversion and every refusal.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

/// Writes raw tar streams, including ones no sane tool would produce.
#[derive(Default)]
pub(crate) struct RawTar {
    pub out: Vec<u8>,
}

impl RawTar {
    pub fn header(
        &mut self,
        kind: u8,
        name: &[u8],
        link: &[u8],
        size: u64,
        mode: u32,
    ) -> &mut Self {
        let mut h = ::tar::Header::new_ustar();
        {
            let u = h.as_ustar_mut().unwrap();
            u.name = [0; 100];
            u.name[..name.len()].copy_from_slice(name);
            u.linkname = [0; 100];
            u.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(::tar::EntryType::new(kind));
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self
    }
    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.header(b'0', name.as_bytes(), b"", data.len() as u64, mode);
        self.data(data)
    }
    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.header(b'5', name.as_bytes(), b"", 0, mode)
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.header(b'2', name.as_bytes(), target.as_bytes(), 0, 0o777)
    }
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.header(b'1', name.as_bytes(), target.as_bytes(), 0, 0o644)
    }
    pub fn pax(&mut self, records: &[(&str, &str)]) -> &mut Self {
        let body: String = records
            .iter()
            .map(|(k, v)| super::tar::tests::rec(k, v))
            .collect();
        self.header(b'x', b"PaxHeader", b"", body.len() as u64, 0o644);
        self.data(body.as_bytes())
    }
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

fn unpack(data: &[u8]) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
    unpack_with(data, &UnpackLimits::default())
}

fn unpack_with(
    data: &[u8],
    limits: &UnpackLimits,
) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("layer")).unwrap();
    let r = unpack_tar(data, None, &dir.path().join("layer"), limits);
    (dir, r)
}

fn refusal(r: Result<UnpackStats, UnpackError>) -> Refusal {
    match r {
        Err(UnpackError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: strings are NUL-terminated; buf has buf.len() writable bytes.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}

#[test]
fn unpacks_files_dirs_links_modes_owners_times() {
    let mut t = RawTar::default();
    t.dir("./", 0o755)
        .dir("./bin/", 0o755)
        .file("./bin/tool", b"#!/bin/sh\necho hi\n", 0o4755)
        .symlink("bin/sh", "/bin/busybox")
        .hardlink("bin/tool2", "./bin/tool")
        .header(b'6', b"run/fifo", b"", 0, 0o620)
        .dir("tmp", 0o1777);
    // Owner and an xattr through PAX.
    t.pax(&[
        ("uid", "1000"),
        ("gid", "1001"),
        ("SCHILY.xattr.user.note", "hello"),
        ("mtime", "1700000000.5"),
    ])
    .file("home/u/file", b"data", 0o640);
    let data = t.finish();
    let (dir, r) = unpack(&data);
    let stats = r.unwrap();
    let root = dir.path().join("layer");
    assert_eq!(stats.entries, 8);
    assert_eq!(stats.size, 18 + 4);
    assert_eq!(stats.tar_size, data.len() as u64);
    assert_eq!(stats.diff_id, Digest::of_bytes(&data));

    let tool = fs::symlink_metadata(root.join("bin/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(tool.mtime(), 1_600_000_000);
    assert_eq!(
        fs::read(root.join("bin/tool")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    let tool2 = fs::symlink_metadata(root.join("bin/tool2")).unwrap();
    assert_eq!(tool2.ino(), tool.ino());
    assert!(fs::symlink_metadata(root.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        fs::symlink_metadata(root.join("run/fifo"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o620
    );
    assert_eq!(
        fs::symlink_metadata(root.join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    let f = fs::symlink_metadata(root.join("home/u/file")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1000, 1001));
    assert_eq!((f.mtime(), f.mtime_nsec()), (1_700_000_000, 500_000_000));
    assert_eq!(
        xattr(&root.join("home/u/file"), "user.note").as_deref(),
        Some(&b"hello"[..])
    );
    // Implicit parents: 0755 root.
    let home = fs::symlink_metadata(root.join("home")).unwrap();
    assert!(home.is_dir());
    assert_eq!(home.permissions().mode() & 0o7777, 0o755);
    // Directory times survive the creation of their children.
    assert_eq!(
        fs::symlink_metadata(root.join("bin")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(fs::symlink_metadata(&root).unwrap().mtime(), 1_600_000_000);
}

#[test]
fn converts_whiteouts_to_overlayfs_format() {
    let mut t = RawTar::default();
    t.dir("etc", 0o755)
        .header(b'0', b"etc/.wh.passwd", b"", 0, 0o644)
        .dir("var/cache", 0o755)
        .header(b'0', b"var/cache/.wh..wh..opq", b"", 0, 0o644)
        .header(b'0', b".wh.gone-dir", b"", 0, 0o644)
        .header(b'0', b"x/.wh..wh.plnk", b"", 0, 0o644);
    let (dir, r) = unpack(&t.finish());
    r.unwrap();
    let root = dir.path().join("layer");
    let wh = fs::symlink_metadata(root.join("etc/passwd")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(fs::symlink_metadata(root.join("gone-dir"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(!root.join("etc/.wh.passwd").exists());
    assert_eq!(
        xattr(&root.join("var/cache"), OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert!(!root.join("var/cache/.wh..wh..opq").exists());
    assert!(xattr(&root.join("etc"), OPAQUE_XATTR).is_none());
    // aufs metadata is dropped entirely.
    assert!(!root.join("x").exists());
}

#[test]
fn refuses_invalid_whiteout_names() {
    let mut t = RawTar::default();
    t.header(b'0', b"a/.wh...", b"", 0, 0o644);
    let (_d, r) = unpack(&t.finish());
    assert_eq!(refusal(r), Refusal::BadWhiteout);
}

#[test]
fn trusted_xattrs_from_the_image_are_not_applied() {
    let mut t = RawTar::default();
    t.pax(&[
        ("SCHILY.xattr.trusted.overlay.opaque", "y"),
        ("SCHILY.xattr.trusted.overlay.redirect", "/etc"),
    ])
    .dir("d", 0o755);
    let (dir, r) = unpack(&t.finish());
    r.unwrap();
    assert!(xattr(&dir.path().join("layer/d"), OPAQUE_XATTR).is_none());
    assert!(xattr(&dir.path().join("layer/d"), "trusted.overlay.redirect").is_none());
}

#[test]
fn later_entries_replace_earlier_ones() {
    let mut t = RawTar::default();
    t.file("a", b"one", 0o644)
        .file("a", b"two", 0o600)
        .dir("b", 0o755)
        .file("b/inner", b"x", 0o644)
        .file("b", b"now a file", 0o644)
        .file("c", b"file", 0o644)
        .dir("c", 0o700)
        .symlink("d", "target")
        .file("d", b"replaced symlink", 0o644);
    let (dir, r) = unpack(&t.finish());
    r.unwrap();
    let root = dir.path().join("layer");
    assert_eq!(fs::read(root.join("a")).unwrap(), b"two");
    assert_eq!(fs::read(root.join("b")).unwrap(), b"now a file");
    assert!(root.join("c").is_dir());
    assert_eq!(fs::read(root.join("d")).unwrap(), b"replaced symlink");
}

#[test]
fn long_names_via_gnu_and_pax() {
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(120));
    let mut t = RawTar::default();
    t.header(b'L', b"././@LongLink", b"", long.len() as u64 + 1, 0o644);
    let mut name = long.clone().into_bytes();
    name.push(0);
    t.data(&name).file("short-placeholder", b"gnu", 0o644);
    let long2 = format!("{}/{}", "e".repeat(150), "g".repeat(120));
    t.pax(&[("path", &long2)])
        .file("placeholder2", b"pax", 0o644);
    let (dir, r) = unpack(&t.finish());
    r.unwrap();
    assert_eq!(
        fs::read(dir.path().join("layer").join(&long)).unwrap(),
        b"gnu"
    );
    assert_eq!(
        fs::read(dir.path().join("layer").join(&long2)).unwrap(),
        b"pax"
    );
}

// --- hostile input -------------------------------------------------------

/// A canary outside the layer that no refused tar may touch.
fn canary(dir: &Path) -> std::path::PathBuf {
    let c = dir.join("canary");
    fs::create_dir_all(&c).unwrap();
    fs::write(c.join("file"), b"canary").unwrap();
    c
}

fn assert_canary(c: &Path) {
    assert_eq!(fs::read(c.join("file")).unwrap(), b"canary");
    assert_eq!(
        fs::read_dir(c).unwrap().count(),
        1,
        "something was created next to the canary"
    );
}

#[test]
fn refuses_dotdot() {
    let mut t = RawTar::default();
    t.file("../escape", b"x", 0o644);
    let (d, r) = unpack(&t.finish());
    assert_eq!(refusal(r), Refusal::DotDot);
    assert!(!d.path().join("escape").exists());
    let mut t = RawTar::default();
    t.file("a/../../escape", b"x", 0o644);
    assert_eq!(refusal(unpack(&t.finish()).1), Refusal::DotDot);
}

#[test]
fn refuses_absolute_paths() {
    let mut t = RawTar::default();
    t.file("/etc/moat-test-absolute", b"x", 0o644);
    let (_d, r) = unpack(&t.finish());
    assert_eq!(refusal(r), Refusal::Absolute);
    assert!(!Path::new("/etc/moat-test-absolute").exists());
}

#[test]
fn refuses_write_through_symlink() {
    let mut t = RawTar::default();
    let dir = tempfile::tempdir().unwrap();
    let c = canary(dir.path());
    t.symlink("evil", c.to_str().unwrap())
        .file("evil/file", b"pwned", 0o644);
    let data = t.finish();
    fs::create_dir(dir.path().join("layer")).unwrap();
    let r = unpack_tar(
        &data[..],
        None,
        &dir.path().join("layer"),
        &UnpackLimits::default(),
    );
    assert_eq!(refusal(r), Refusal::SymlinkInPath);
    assert_canary(&c);

    // A relative symlink climbing out, then a new file through it.
    let mut t = RawTar::default();
    t.symlink("up", "../canary").file("up/new", b"pwned", 0o644);
    let data = t.finish();
    fs::remove_dir_all(dir.path().join("layer")).unwrap();
    fs::create_dir(dir.path().join("layer")).unwrap();
    let r = unpack_tar(
        &data[..],
        None,
        &dir.path().join("layer"),
        &UnpackLimits::default(),
    );
    assert_eq!(refusal(r), Refusal::SymlinkInPath);
    assert_canary(&c);

    // A symlinked directory deeper in the path, and an opaque marker through it.
    let mut t = RawTar::default();
    t.dir("a", 0o755).symlink("a/b", "../../canary").header(
        b'0',
        b"a/b/.wh..wh..opq",
        b"",
        0,
        0o644,
    );
    let data = t.finish();
    fs::remove_dir_all(dir.path().join("layer")).unwrap();
    fs::create_dir(dir.path().join("layer")).unwrap();
    let r = unpack_tar(
        &data[..],
        None,
        &dir.path().join("layer"),
        &UnpackLimits::default(),
    );
    assert_eq!(refusal(r), Refusal::SymlinkInPath);
    assert!(xattr(&c, OPAQUE_XATTR).is_none());
    assert_canary(&c);
}

#[test]
fn refuses_hardlink_escapes() {
    for target in ["/etc/passwd", "../../../../etc/passwd", "a/../../x"] {
        let mut t = RawTar::default();
        t.hardlink("passwd", target);
        let (_d, r) = unpack(&t.finish());
        assert_eq!(refusal(r), Refusal::HardlinkOutside, "{target}");
    }
    // Through a symlink to the host's /etc.
    let mut t = RawTar::default();
    t.symlink("etc", "/etc").hardlink("passwd", "etc/passwd");
    let (d, r) = unpack(&t.finish());
    assert_eq!(refusal(r), Refusal::SymlinkInPath);
    assert!(!d.path().join("layer/passwd").exists());
    // A target that is not in this layer.
    let mut t = RawTar::default();
    t.hardlink("x", "missing/file");
    assert_eq!(
        refusal(unpack(&t.finish()).1),
        Refusal::HardlinkTargetMissing
    );
    let mut t = RawTar::default();
    t.hardlink("x", "missing");
    assert_eq!(
        refusal(unpack(&t.finish()).1),
        Refusal::HardlinkTargetMissing
    );
    // To a directory.
    let mut t = RawTar::default();
    t.dir("d", 0o755).hardlink("x", "d");
    assert_eq!(refusal(unpack(&t.finish()).1), Refusal::HardlinkTargetType);
}

#[test]
fn refuses_device_nodes_unless_skipped() {
    let mut t = RawTar::default();
    let mut h = ::tar::Header::new_ustar();
    h.set_path("dev/mem").unwrap();
    h.set_entry_type(::tar::EntryType::Char);
    h.set_device_major(1).unwrap();
    h.set_device_minor(1).unwrap();
    h.set_size(0);
    h.set_mode(0o600);
    h.set_cksum();
    t.out.extend_from_slice(h.as_bytes());
    t.header(b'4', b"dev/sda", b"", 0, 0o600)
        .file("after", b"ok", 0o644);
    let data = t.finish();
    let (d, r) = unpack(&data);
    assert_eq!(refusal(r), Refusal::DeviceNode);
    assert!(!d.path().join("layer/dev/mem").exists());
    let limits = UnpackLimits {
        devices: DevicePolicy::Skip,
        ..UnpackLimits::default()
    };
    let (d, r) = unpack_with(&data, &limits);
    r.unwrap();
    assert!(!d.path().join("layer/dev/mem").exists());
    assert!(!d.path().join("layer/dev/sda").exists());
    assert_eq!(fs::read(d.path().join("layer/after")).unwrap(), b"ok");
}

#[test]
fn refuses_truncated_streams() {
    let mut t = RawTar::default();
    t.file("big", &vec![1u8; 5000], 0o644);
    let data = t.finish();
    for cut in [3000, 600, 100] {
        let (_d, r) = unpack(&data[..cut]);
        assert!(
            matches!(r, Err(UnpackError::Truncated(_))),
            "cut at {cut}: {r:?}"
        );
    }
}

#[test]
fn refuses_wrong_diff_id() {
    let mut t = RawTar::default();
    t.file("a", b"a", 0o644);
    let data = t.finish();
    let dir = tempfile::tempdir().unwrap();
    let wrong = Digest::of_bytes(b"something else");
    let r = unpack_tar(
        &data[..],
        Some(&wrong),
        dir.path(),
        &UnpackLimits::default(),
    );
    match r {
        Err(UnpackError::DiffIdMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, Digest::of_bytes(&data));
        }
        other => panic!("{other:?}"),
    }
    let right = Digest::of_bytes(&data);
    let dir = tempfile::tempdir().unwrap();
    unpack_tar(
        &data[..],
        Some(&right),
        dir.path(),
        &UnpackLimits::default(),
    )
    .unwrap();
}

#[test]
fn diff_id_covers_trailing_bytes_after_the_end_marker() {
    let mut t = RawTar::default();
    t.file("a", b"a", 0o644);
    let mut data = t.finish();
    data.extend_from_slice(&[0u8; 8192]);
    let (_d, r) = unpack(&data);
    assert_eq!(r.unwrap().diff_id, Digest::of_bytes(&data));
}

#[test]
fn refuses_oversized_headers() {
    let limits = UnpackLimits {
        max_path_len: 256,
        max_pax_header_size: 1024,
        ..UnpackLimits::default()
    };
    let mut t = RawTar::default();
    t.header(b'L', b"././@LongLink", b"", 1 << 40, 0o644);
    let (_d, r) = unpack_with(&t.finish(), &limits);
    assert!(matches!(r, Err(UnpackError::Limit(_))), "{r:?}");

    let mut t = RawTar::default();
    t.header(b'x', b"PaxHeader", b"", 1 << 30, 0o644);
    let (_d, r) = unpack_with(&t.finish(), &limits);
    assert!(matches!(r, Err(UnpackError::Limit(_))), "{r:?}");

    let mut t = RawTar::default();
    t.pax(&[("path", &"p".repeat(300))]).file("x", b"", 0o644);
    let (_d, r) = unpack_with(&t.finish(), &limits);
    assert!(matches!(r, Err(UnpackError::Limit(_))), "{r:?}");
}

#[test]
fn enforces_entry_and_size_limits() {
    let limits = UnpackLimits {
        max_entries: 3,
        ..UnpackLimits::default()
    };
    let mut t = RawTar::default();
    for i in 0..5 {
        t.file(&format!("f{i}"), b"", 0o644);
    }
    let (_d, r) = unpack_with(&t.finish(), &limits);
    assert!(matches!(r, Err(UnpackError::Limit(_))), "{r:?}");

    let limits = UnpackLimits {
        max_total_bytes: 4096,
        ..UnpackLimits::default()
    };
    let mut t = RawTar::default();
    t.file("big", &vec![0u8; 10_000], 0o644);
    let (_d, r) = unpack_with(&t.finish(), &limits);
    assert!(matches!(r, Err(UnpackError::Limit(_))), "{r:?}");
}

#[test]
fn refuses_corrupt_and_unsupported() {
    let mut t = RawTar::default();
    t.file("a", b"a", 0o644);
    let mut data = t.finish();
    data[0] ^= 0xff;
    assert!(matches!(unpack(&data).1, Err(UnpackError::Corrupt(_))));
    assert!(
        unpack(b"this is not a tar file at all, just text padded out to be long enough.....")
            .1
            .is_err()
    );

    let mut t = RawTar::default();
    t.header(b'S', b"sparse", b"", 0, 0o644);
    assert!(matches!(
        refusal(unpack(&t.finish()).1),
        Refusal::Unsupported(_)
    ));
    let mut t = RawTar::default();
    t.header(b'V', b"volume", b"", 0, 0o644);
    assert_eq!(
        refusal(unpack(&t.finish()).1),
        Refusal::UnsupportedType(b'V')
    );
    let mut t = RawTar::default();
    t.header(b'2', b"empty-link", b"", 0, 0o777);
    assert_eq!(refusal(unpack(&t.finish()).1), Refusal::EmptyLinkTarget);
    let mut t = RawTar::default();
    t.file("./", b"", 0o644);
    assert_eq!(refusal(unpack(&t.finish()).1), Refusal::RootNotDirectory);
}

#[test]
fn header_only_types_carry_no_data_like_go() {
    // A symlink header claiming 512 bytes of data: Go reads none, so neither do we;
    // the next header starts right after it.
    let mut t = RawTar::default();
    t.header(b'2', b"l", b"target", 512, 0o777)
        .file("f", b"x", 0o644);
    let (d, r) = unpack(&t.finish());
    r.unwrap();
    assert_eq!(fs::read(d.path().join("layer/f")).unwrap(), b"x");
}

#[test]
fn compressed_streams_and_declared_mismatch() {
    let mut t = RawTar::default();
    t.file("hello", b"world", 0o644);
    let tar = t.finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let diff = Digest::of_bytes(&tar);
    for (data, declared) in [
        (&gz, Some(Compression::Gzip)),
        (&gz, None),
        (&zst, Some(Compression::Zstd)),
        (&zst, Some(Compression::None)),
        (&tar, None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = unpack_layer(
            &data[..],
            declared,
            Some(&diff),
            dir.path(),
            &UnpackLimits::default(),
        )
        .unwrap();
        assert_eq!(s.diff_id, diff);
        assert_eq!(fs::read(dir.path().join("hello")).unwrap(), b"world");
    }
    let dir = tempfile::tempdir().unwrap();
    let r = unpack_layer(
        &tar[..],
        Some(Compression::Gzip),
        None,
        dir.path(),
        &UnpackLimits::default(),
    );
    assert!(matches!(r, Err(UnpackError::Corrupt(_))), "{r:?}");
    // A truncated gzip stream.
    let dir = tempfile::tempdir().unwrap();
    let r = unpack_layer(
        &gz[..gz.len() / 2],
        Some(Compression::Gzip),
        None,
        dir.path(),
        &UnpackLimits::default(),
    );
    assert!(r.is_err());
}

#[test]
fn normalizes_paths() {
    assert_eq!(
        normalize(b"./a//b/./c/").unwrap(),
        vec![&b"a"[..], b"b", b"c"]
    );
    assert_eq!(normalize(b"./").unwrap(), Vec::<&[u8]>::new());
    assert_eq!(normalize(b"a/../b"), Err(Refusal::DotDot));
    assert_eq!(normalize(b"/a"), Err(Refusal::Absolute));
    assert_eq!(normalize(b"..."), Ok(vec![&b"..."[..]]));
}
