//! Snapshots of a directory tree, for the escape checks: a target takes one of
//! everything *outside* the directory it lets the fuzzer write, runs, and takes
//! another; any difference is a write that crossed the boundary. Also the scan
//! for device nodes.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What is recorded of one entry (no atime: reads are allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryState {
    pub kind: &'static str,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub nlink: u64,
    pub rdev: u64,
    /// File contents (small files only) or symlink target.
    pub content: Vec<u8>,
}

fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "other"
    }
}

/// Records `root` and everything below it, except the subtrees in `skip`.
pub fn snapshot(root: &Path, skip: &[&Path]) -> BTreeMap<PathBuf, EntryState> {
    let mut out = BTreeMap::new();
    walk(root, skip, &mut out);
    out
}

fn walk(path: &Path, skip: &[&Path], out: &mut BTreeMap<PathBuf, EntryState>) {
    if skip.contains(&path) {
        return;
    }
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let ft = meta.file_type();
    let content = if ft.is_symlink() {
        fs::read_link(path)
            .map(|t| t.into_os_string().into_encoded_bytes())
            .unwrap_or_default()
    } else if ft.is_file() && meta.len() <= 1 << 16 {
        fs::read(path).unwrap_or_default()
    } else {
        Vec::new()
    };
    out.insert(
        path.to_path_buf(),
        EntryState {
            kind: kind_of(ft),
            ino: meta.ino(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            nlink: meta.nlink(),
            rdev: meta.rdev(),
            content,
        },
    );
    if ft.is_dir() {
        if let Ok(rd) = fs::read_dir(path) {
            let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            names.sort();
            for p in names {
                walk(&p, skip, out);
            }
        }
    }
}

/// Panics (a finding) with the first difference between two snapshots.
pub fn assert_unchanged(
    what: &str,
    before: &BTreeMap<PathBuf, EntryState>,
    after: &BTreeMap<PathBuf, EntryState>,
) {
    for (p, b) in before {
        match after.get(p) {
            None => panic!("{what}: {} was removed", p.display()),
            Some(a) if a != b => {
                panic!(
                    "{what}: {} changed:\n before {b:?}\n after  {a:?}",
                    p.display()
                )
            }
            Some(_) => {}
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) {
            panic!("{what}: {} appeared", p.display());
        }
    }
}

/// Device nodes under `root` other than overlayfs whiteouts (character device
/// 0/0), as (path, kind, rdev).
pub fn device_nodes(root: &Path) -> Vec<(PathBuf, &'static str, u64)> {
    snapshot(root, &[])
        .into_iter()
        .filter(|(_, e)| (e.kind == "char" && e.rdev != 0) || e.kind == "block")
        .map(|(p, e)| (p, e.kind, e.rdev))
        .collect()
}
