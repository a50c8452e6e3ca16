//! The configuration of one virtio-fs device (its tag, its request queues and its
//! mounts) and the checks that turn it into a [`ValidConfig`].
//!
//! It owns only validation: it touches the host file system to resolve and check
//! each host directory, and never opens or mounts anything.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

/// Longest tag the config space holds (`tag[36]`, virtio 1.2 §5.11.4).
pub const MAX_TAG_LEN: usize = 36;
/// Most request queues a device accepts. Linux 6.1 uses one; more only cost
/// eventfds.
pub const MAX_REQUEST_QUEUES: u16 = 16;
/// Most mounts one device serves: the FUSE inode numbers carry an 8-bit mount
/// index, and index 0 is the pseudo root.
pub const MAX_MOUNTS: usize = 255;
/// Longest guest path accepted for a mount point.
const MAX_GUEST_PATH_LEN: usize = 1024;
/// Longest single component of a guest path (`NAME_MAX`).
const MAX_COMPONENT_LEN: usize = 255;

/// One directory of the host served at `guest_path` inside the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsMount {
    /// Where the directory appears inside the share, e.g. `/` for a plain share
    /// or `/layers/3` when several directories share one device. Absolute and
    /// normalised (no `.`, `..`, empty components or trailing `/`).
    pub guest_path: String,
    /// The host directory served. Resolved with `canonicalize` at validation.
    pub host_dir: PathBuf,
    /// Refuse every mutating request with `EROFS`.
    pub read_only: bool,
}

/// The configuration of one virtio-fs device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs <tag> /mnt`): 1 to 36 bytes,
    /// no NUL or control characters.
    pub tag: String,
    /// Number of request queues, 1 to [`MAX_REQUEST_QUEUES`]. The device has one
    /// more queue, the high-priority queue, at index 0.
    pub num_request_queues: u16,
    /// The directories served. A single mount at `/` is a plain share; several
    /// mounts (none at `/`, none inside another) appear under a read-only pseudo
    /// root.
    pub mounts: Vec<FsMount>,
}

impl FsConfig {
    /// A device with one request queue and the given mounts.
    pub fn new(tag: impl Into<String>, mounts: Vec<FsMount>) -> Self {
        FsConfig {
            tag: tag.into(),
            num_request_queues: 1,
            mounts,
        }
    }
}

/// Why a virtio-fs configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum FsConfigError {
    #[error("virtio-fs tag {tag:?}: must be 1 to {MAX_TAG_LEN} bytes, is {len}")]
    TagLength { tag: String, len: usize },
    #[error("virtio-fs tag {tag:?}: must not contain NUL or control characters")]
    TagCharacters { tag: String },
    #[error("virtio-fs {tag}: num_request_queues {got} is outside 1..={MAX_REQUEST_QUEUES}")]
    RequestQueues { tag: String, got: u16 },
    #[error("virtio-fs {tag}: no mounts configured")]
    NoMounts { tag: String },
    #[error("virtio-fs {tag}: {count} mounts configured, at most {MAX_MOUNTS} are supported")]
    TooManyMounts { tag: String, count: usize },
    #[error("virtio-fs {tag}: guest path {path:?}: {reason}")]
    GuestPath {
        tag: String,
        path: String,
        reason: &'static str,
    },
    #[error("virtio-fs {tag}: guest paths {first:?} and {second:?} overlap; mounts may not nest or repeat")]
    GuestPathOverlap {
        tag: String,
        first: String,
        second: String,
    },
    #[error("virtio-fs {tag}: host dir {}: {source}", path.display())]
    HostDir {
        tag: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("virtio-fs {tag}: host dir {}: not a directory", path.display())]
    HostDirNotDirectory { tag: String, path: PathBuf },
    #[error("virtio-fs {tag}: host dir {}: path must be UTF-8 without NUL", path.display())]
    HostDirEncoding { tag: String, path: PathBuf },
}

/// A mount that passed validation; `host_dir` is canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidMount {
    pub guest_path: String,
    pub host_dir: PathBuf,
    /// `host_dir` as a string, for the passthrough backend (which takes a `String`).
    pub host_dir_str: String,
    pub read_only: bool,
}

/// A configuration that passed [`FsConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidConfig {
    pub tag: String,
    pub num_request_queues: u16,
    pub mounts: Vec<ValidMount>,
}

impl FsConfig {
    /// Checks the tag, the queue count, every guest path and every host directory.
    pub fn validate(&self) -> Result<ValidConfig, FsConfigError> {
        let tag = self.tag.clone();
        if self.tag.is_empty() || self.tag.len() > MAX_TAG_LEN {
            return Err(FsConfigError::TagLength {
                len: self.tag.len(),
                tag,
            });
        }
        if self.tag.chars().any(char::is_control) {
            return Err(FsConfigError::TagCharacters { tag });
        }
        if self.num_request_queues == 0 || self.num_request_queues > MAX_REQUEST_QUEUES {
            return Err(FsConfigError::RequestQueues {
                tag,
                got: self.num_request_queues,
            });
        }
        if self.mounts.is_empty() {
            return Err(FsConfigError::NoMounts { tag });
        }
        if self.mounts.len() > MAX_MOUNTS {
            return Err(FsConfigError::TooManyMounts {
                tag,
                count: self.mounts.len(),
            });
        }

        for m in &self.mounts {
            check_guest_path(&m.guest_path).map_err(|reason| FsConfigError::GuestPath {
                tag: tag.clone(),
                path: m.guest_path.clone(),
                reason,
            })?;
        }
        check_no_overlap(&self.mounts).map_err(|(first, second)| {
            FsConfigError::GuestPathOverlap {
                tag: tag.clone(),
                first,
                second,
            }
        })?;

        let mut mounts = Vec::with_capacity(self.mounts.len());
        for m in &self.mounts {
            let host_dir = resolve_host_dir(&tag, &m.host_dir)?;
            let host_dir_str = match host_dir.to_str() {
                Some(s) if !s.contains('\0') => s.to_owned(),
                _ => {
                    return Err(FsConfigError::HostDirEncoding {
                        tag,
                        path: m.host_dir.clone(),
                    })
                }
            };
            mounts.push(ValidMount {
                guest_path: m.guest_path.clone(),
                host_dir,
                host_dir_str,
                read_only: m.read_only,
            });
        }

        Ok(ValidConfig {
            tag,
            num_request_queues: self.num_request_queues,
            mounts,
        })
    }
}

fn resolve_host_dir(tag: &str, path: &Path) -> Result<PathBuf, FsConfigError> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(FsConfigError::HostDirEncoding {
            tag: tag.to_owned(),
            path: path.to_owned(),
        });
    }
    let canonical = std::fs::canonicalize(path).map_err(|source| FsConfigError::HostDir {
        tag: tag.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    let meta = std::fs::metadata(&canonical).map_err(|source| FsConfigError::HostDir {
        tag: tag.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(FsConfigError::HostDirNotDirectory {
            tag: tag.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(canonical)
}

/// A guest path is `/` or `/c1/c2/...` with non-empty components other than `.`
/// and `..`, no trailing `/` and no NUL.
fn check_guest_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must be absolute");
    }
    if path.len() > MAX_GUEST_PATH_LEN {
        return Err("is too long");
    }
    if path.contains('\0') {
        return Err("must not contain NUL");
    }
    if path == "/" {
        return Ok(());
    }
    for component in path[1..].split('/') {
        match component {
            "" => return Err("must be normalised (no empty component or trailing '/')"),
            "." | ".." => return Err("must be normalised (no '.' or '..')"),
            c if c.len() > MAX_COMPONENT_LEN => {
                return Err("has a component longer than 255 bytes")
            }
            _ => {}
        }
    }
    Ok(())
}

fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

/// No two mounts at the same path, and none inside another: the union file system
/// serves a mount's whole subtree, so a nested mount would be unreachable. A mount
/// at `/` is inside every other path, so it must be the only one.
fn check_no_overlap(mounts: &[FsMount]) -> Result<(), (String, String)> {
    let mut seen = HashSet::new();
    for m in mounts {
        if !seen.insert(m.guest_path.as_str()) {
            return Err((m.guest_path.clone(), m.guest_path.clone()));
        }
    }
    for (i, a) in mounts.iter().enumerate() {
        let ca = components(&a.guest_path);
        for b in &mounts[i + 1..] {
            let cb = components(&b.guest_path);
            let n = ca.len().min(cb.len());
            if ca[..n] == cb[..n] {
                return Err((a.guest_path.clone(), b.guest_path.clone()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    fn mount(guest: &str, host: &Path, read_only: bool) -> FsMount {
        FsMount {
            guest_path: guest.to_owned(),
            host_dir: host.to_owned(),
            read_only,
        }
    }

    #[test]
    fn accepts_plain_share_and_layer_set() {
        let a = TempDir::new().unwrap();
        let b = TempDir::new().unwrap();
        let cfg = FsConfig::new("root", vec![mount("/", a.as_path(), false)]);
        let valid = cfg.validate().unwrap();
        assert_eq!(valid.num_request_queues, 1);
        assert_eq!(
            valid.mounts[0].host_dir,
            a.as_path().canonicalize().unwrap()
        );

        let cfg = FsConfig::new(
            "layers",
            vec![
                mount("/layers/0", a.as_path(), true),
                mount("/layers/1", b.as_path(), true),
                mount("/upper", b.as_path(), false),
            ],
        );
        assert_eq!(cfg.validate().unwrap().mounts.len(), 3);
    }

    #[test]
    fn tag_must_fit_and_be_printable() {
        let d = TempDir::new().unwrap();
        let m = vec![mount("/", d.as_path(), false)];
        for bad in ["", &"x".repeat(37), "a\0b", "a\nb"] {
            let err = FsConfig::new(bad, m.clone()).validate().unwrap_err();
            assert!(
                matches!(
                    err,
                    FsConfigError::TagLength { .. } | FsConfigError::TagCharacters { .. }
                ),
                "{bad:?}: {err}"
            );
        }
        FsConfig::new("x".repeat(36), m).validate().unwrap();
    }

    #[test]
    fn queue_count_is_bounded() {
        let d = TempDir::new().unwrap();
        let mut cfg = FsConfig::new("t", vec![mount("/", d.as_path(), false)]);
        cfg.num_request_queues = 0;
        assert!(matches!(
            cfg.validate(),
            Err(FsConfigError::RequestQueues { .. })
        ));
        cfg.num_request_queues = MAX_REQUEST_QUEUES + 1;
        assert!(matches!(
            cfg.validate(),
            Err(FsConfigError::RequestQueues { .. })
        ));
        cfg.num_request_queues = MAX_REQUEST_QUEUES;
        cfg.validate().unwrap();
    }

    #[test]
    fn guest_paths_must_be_absolute_and_normalised() {
        let d = TempDir::new().unwrap();
        for bad in [
            "", "a", "layers/0", "/a/", "//a", "/a//b", "/a/./b", "/a/../b", "/..", "/.", "/a\0",
        ] {
            let err = FsConfig::new("t", vec![mount(bad, d.as_path(), true)])
                .validate()
                .unwrap_err();
            assert!(
                matches!(err, FsConfigError::GuestPath { .. }),
                "{bad:?}: {err}"
            );
        }
        let long = format!("/{}", "x".repeat(256));
        assert!(FsConfig::new("t", vec![mount(&long, d.as_path(), true)])
            .validate()
            .is_err());
    }

    #[test]
    fn guest_paths_must_be_distinct_and_not_nested() {
        let d = TempDir::new().unwrap();
        let p = d.as_path();
        let cases: &[&[&str]] = &[
            &["/a", "/a"],
            &["/a", "/a/b"],
            &["/a/b", "/a"],
            &["/", "/a"],
            &["/x", "/"],
        ];
        for paths in cases {
            let mounts = paths.iter().map(|g| mount(g, p, true)).collect();
            let err = FsConfig::new("t", mounts).validate().unwrap_err();
            assert!(
                matches!(err, FsConfigError::GuestPathOverlap { .. }),
                "{paths:?}: {err}"
            );
        }
        // A common prefix that is not a whole component is not nesting.
        let mounts = vec![mount("/ab", p, true), mount("/a", p, true)];
        FsConfig::new("t", mounts).validate().unwrap();
    }

    #[test]
    fn host_dir_must_exist_and_be_a_directory() {
        let d = TempDir::new().unwrap();
        let missing = d.as_path().join("missing");
        let err = FsConfig::new("t", vec![mount("/", &missing, false)])
            .validate()
            .unwrap_err();
        assert!(matches!(err, FsConfigError::HostDir { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");

        let file = d.as_path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = FsConfig::new("t", vec![mount("/", &file, false)])
            .validate()
            .unwrap_err();
        assert!(
            matches!(err, FsConfigError::HostDirNotDirectory { .. }),
            "{err}"
        );
    }

    #[test]
    fn host_dir_symlink_is_resolved() {
        let d = TempDir::new().unwrap();
        let real = d.as_path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = d.as_path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let valid = FsConfig::new("t", vec![mount("/", &link, false)])
            .validate()
            .unwrap();
        assert_eq!(valid.mounts[0].host_dir, real.canonicalize().unwrap());
    }

    #[test]
    fn mount_count_is_bounded() {
        let d = TempDir::new().unwrap();
        let mounts = (0..=MAX_MOUNTS)
            .map(|i| mount(&format!("/l/{i}"), d.as_path(), true))
            .collect();
        let err = FsConfig::new("t", mounts).validate().unwrap_err();
        assert!(matches!(err, FsConfigError::TooManyMounts { .. }), "{err}");
        let err = FsConfig::new("t", vec![]).validate().unwrap_err();
        assert!(matches!(err, FsConfigError::NoMounts { .. }), "{err}");
    }
}
