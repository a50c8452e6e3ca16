//! The demo image of `moat-demo`: a rootfs tarball of Debian's busybox-static
//! (`/bin/busybox`, one symlink per applet, the directories a container expects,
//! a minimal `/etc/passwd` and `/etc/group`), imported into an image store the
//! way `docker import` does, so it goes through the real store: blob, layer
//! unpack, image record, layer directories. This module owns building that
//! tarball only; it must not touch VMs or the store's internals.
//!
//! The tarball is reproducible: entries in a fixed order, owner 0:0, mtime 0, so
//! one busybox binary always gives the same layer (diff-id), which the store
//! unpacks once.

use std::io::{self, Cursor, Read};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use moat_images::archive::{import_rootfs, ArchiveError, ImportOptions};
use moat_images::manifest::RunConfig;
use moat_images::{Digest, ImageRef, Store, StoreError};

/// The tag the demo image gets.
pub const DEMO_IMAGE_TAG: &str = "moat-demo/busybox:latest";
/// Where Debian's busybox-static installs the binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// A busybox bigger than this is not the one we mean.
const MAX_BUSYBOX_SIZE: u64 = 32 << 20;
/// Most applets taken from `busybox --list-full` (Debian's has about 270).
const MAX_APPLETS: usize = 1024;
/// Where every applet link points.
const BUSYBOX_IN_IMAGE: &str = "bin/busybox";

/// Directories of the image, with their modes, before the applets' own.
const BASE_DIRS: [(&str, u32); 13] = [
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("home", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("sbin", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("var", 0o755),
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Building or importing the demo image failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoImageError {
    #[error("demo image: read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("demo image: {} is not a static executable for this machine ({reason}); install Debian's busybox-static", path.display())]
    NotStatic { path: PathBuf, reason: String },
    #[error("demo image: list the applets of {} (--list-full): {reason}", path.display())]
    Applets { path: PathBuf, reason: String },
    #[error("demo image: write the rootfs tarball: {0}")]
    Tar(#[source] io::Error),
    #[error("demo image: import into the image store: {0}")]
    Import(#[source] ArchiveError),
    #[error("demo image: layer directories of {DEMO_IMAGE_TAG}: {0}")]
    Layers(#[source] StoreError),
}

/// The imported demo image.
#[derive(Debug, Clone)]
pub struct DemoImage {
    pub id: Digest,
    /// Its layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// Size of the rootfs tarball.
    pub tar_bytes: usize,
    /// How many applet links it has.
    pub applets: usize,
}

/// Builds the rootfs tarball from `busybox` and imports it into `store` as
/// [`DEMO_IMAGE_TAG`].
pub fn import_demo_image(store: &Store, busybox: &Path) -> Result<DemoImage, DemoImageError> {
    let (tar, applets) = rootfs_tar(busybox)?;
    let tar_bytes = tar.len();
    let tag = ImageRef::parse(DEMO_IMAGE_TAG).map_err(|e| {
        DemoImageError::Import(ArchiveError::Invalid {
            op: "import",
            reason: format!("tag {DEMO_IMAGE_TAG}: {e}"),
        })
    })?;
    let opts = ImportOptions {
        tag: Some(tag),
        message: Some("moat demo image: Debian busybox-static".into()),
        run_config: RunConfig {
            cmd: Some(vec!["sh".into()]),
            ..RunConfig::default()
        },
        platform: None,
        source: Some(busybox.display().to_string()),
    };
    let id = import_rootfs(store, Cursor::new(tar), &opts).map_err(DemoImageError::Import)?;
    let layers = store
        .layer_dirs(&id.to_string())
        .map_err(DemoImageError::Layers)?;
    Ok(DemoImage {
        id,
        layers,
        tar_bytes,
        applets,
    })
}

/// The rootfs tarball and its number of applet links.
pub fn rootfs_tar(busybox: &Path) -> Result<(Vec<u8>, usize), DemoImageError> {
    let read_err = |source| DemoImageError::Read {
        path: busybox.to_path_buf(),
        source,
    };
    let mut binary = Vec::new();
    std::fs::File::open(busybox)
        .map_err(read_err)?
        .take(MAX_BUSYBOX_SIZE + 1)
        .read_to_end(&mut binary)
        .map_err(read_err)?;
    if binary.len() as u64 > MAX_BUSYBOX_SIZE {
        return Err(DemoImageError::NotStatic {
            path: busybox.to_path_buf(),
            reason: format!("larger than {MAX_BUSYBOX_SIZE} bytes"),
        });
    }
    check_static_elf(&binary).map_err(|reason| DemoImageError::NotStatic {
        path: busybox.to_path_buf(),
        reason,
    })?;
    let applets = list_applets(busybox)?;
    let tar = build_tar(&binary, &applets).map_err(DemoImageError::Tar)?;
    Ok((tar, applets.len()))
}

/// Runs `busybox --list-full` and checks every path it prints.
fn list_applets(busybox: &Path) -> Result<Vec<String>, DemoImageError> {
    let err = |reason: String| DemoImageError::Applets {
        path: busybox.to_path_buf(),
        reason,
    };
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8(out.stdout).map_err(|_| err("output is not UTF-8".into()))?;
    parse_applets(&text).map_err(err)
}

/// The applet paths of `--list-full` output in a bin directory, without busybox
/// itself, sorted. Others (Debian lists `linuxrc`) are left out.
fn parse_applets(text: &str) -> Result<Vec<String>, String> {
    let mut applets = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == BUSYBOX_IN_IMAGE {
            continue;
        }
        let take = check_applet_path(line).map_err(|why| format!("applet path {line:?}: {why}"))?;
        if !take {
            continue;
        }
        applets.push(line.to_owned());
        if applets.len() > MAX_APPLETS {
            return Err(format!("more than {MAX_APPLETS} applets"));
        }
    }
    if applets.is_empty() {
        return Err("no applets listed".into());
    }
    applets.sort();
    applets.dedup();
    Ok(applets)
}

/// Refuses anything but a relative path of plain components; says whether it
/// names a file directly in one of the image's bin directories (the applets
/// taken).
fn check_applet_path(p: &str) -> Result<bool, &'static str> {
    if p.len() > 100 {
        return Err("longer than 100 bytes");
    }
    if p.chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err("contains a control, space or backslash character");
    }
    let path = Path::new(p);
    if !path.components().all(|c| matches!(c, Component::Normal(_))) || p.contains("/./") {
        return Err("not a plain relative path");
    }
    let dir = path.parent().and_then(Path::to_str).unwrap_or_default();
    Ok(["bin", "sbin", "usr/bin", "usr/sbin"].contains(&dir))
}

/// Refuses anything but a 64-bit little-endian ELF executable for this machine
/// without a program interpreter (`PT_INTERP`): a dynamic binary would not run
/// in an image with no libc.
fn check_static_elf(b: &[u8]) -> Result<(), String> {
    const PT_INTERP: u32 = 3;
    #[cfg(target_arch = "x86_64")]
    const MACHINE: u16 = 62; // EM_X86_64
    #[cfg(target_arch = "aarch64")]
    const MACHINE: u16 = 183; // EM_AARCH64
    fn bytes<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
        b.get(at..at.checked_add(N)?)?.try_into().ok()
    }
    let u16_at = |o: usize| bytes(b, o).map(u16::from_le_bytes);
    let u32_at = |o: usize| bytes(b, o).map(u32::from_le_bytes);
    let u64_at = |o: usize| bytes(b, o).map(u64::from_le_bytes);
    if b.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("no ELF header".into());
    }
    if b.get(4..6) != Some([2u8, 1].as_slice()) {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let short = || "truncated ELF header".to_string();
    let e_type = u16_at(16).ok_or_else(short)?;
    if e_type != 2 && e_type != 3 {
        return Err(format!("ELF type {e_type} is not an executable"));
    }
    let machine = u16_at(18).ok_or_else(short)?;
    if machine != MACHINE {
        return Err(format!("ELF machine {machine}, this machine is {MACHINE}"));
    }
    let phoff = usize::try_from(u64_at(32).ok_or_else(short)?).map_err(|_| short())?;
    let phentsize = usize::from(u16_at(54).ok_or_else(short)?);
    let phnum = usize::from(u16_at(56).ok_or_else(short)?);
    if phentsize < 4 || phnum == 0 {
        return Err("no program headers".into());
    }
    for i in 0..phnum {
        let at = phentsize
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .ok_or("program header offset overflows")?;
        let p_type = u32_at(at).ok_or("program headers past the end of the file")?;
        if p_type == PT_INTERP {
            return Err("dynamically linked (it has a program interpreter)".into());
        }
    }
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// The tarball: directories first (parents before children), busybox, the
/// applet links (absolute, to `/bin/busybox`), `/etc/passwd` and `/etc/group`.
fn build_tar(busybox: &[u8], applets: &[String]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::with_capacity(busybox.len() + (64 << 10)));
    let mut dirs: Vec<(String, u32)> = BASE_DIRS
        .iter()
        .map(|(d, m)| ((*d).to_owned(), *m))
        .collect();
    for a in applets {
        if let Some(parent) = Path::new(a).parent().and_then(Path::to_str) {
            if !dirs.iter().any(|(d, _)| d == parent) {
                dirs.push((parent.to_owned(), 0o755));
            }
        }
    }
    dirs.sort();
    for (dir, mode) in &dirs {
        let mut h = header(tar::EntryType::Directory, *mode, 0);
        b.append_data(&mut h, format!("{dir}/"), io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, BUSYBOX_IN_IMAGE, busybox)?;
    for a in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, a, format!("/{BUSYBOX_IN_IMAGE}"))?;
    }
    for (path, text) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        b.append_data(&mut h, path, text.as_bytes())?;
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_images::StoreOptions;

    /// A minimal ELF64 header with one program header of type `p_type`.
    fn elf(p_type: u32, machine: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&p_type.to_le_bytes());
        b
    }

    #[cfg(target_arch = "x86_64")]
    const HOST: u16 = 62;
    #[cfg(target_arch = "aarch64")]
    const HOST: u16 = 183;

    #[test]
    fn static_elf_check() {
        assert_eq!(check_static_elf(&elf(1, HOST)), Ok(()));
        let dynamic = check_static_elf(&elf(3, HOST)).unwrap_err();
        assert!(dynamic.contains("dynamically linked"), "{dynamic}");
        assert!(check_static_elf(&elf(1, HOST + 1)).is_err());
        assert!(check_static_elf(b"#!/bin/sh\n").is_err());
        assert!(check_static_elf(&elf(1, HOST)[..60]).is_err());
        // Program headers claimed past the end, or at an overflowing offset.
        let mut far = elf(1, HOST);
        far[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check_static_elf(&far).is_err());
        let mut many = elf(1, HOST);
        many[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(check_static_elf(&many).is_err());
    }

    #[test]
    fn applet_list_is_checked() {
        let ok = parse_applets(
            "usr/bin/[\nbin/sh\nbin/busybox\nlinuxrc\nsbin/init\nbin/sh\netc/x\nusr/bin/x/y\n",
        )
        .unwrap();
        assert_eq!(ok, ["bin/sh", "sbin/init", "usr/bin/["]);
        for bad in [
            "/bin/sh",
            "bin/../../etc/x",
            "bin/a b",
            "bin/./sh",
            "./bin/sh",
            "bin/\u{1b}x",
        ] {
            assert!(parse_applets(bad).is_err(), "{bad}");
        }
        // Nothing usable at all.
        assert!(parse_applets("").is_err());
        assert!(parse_applets("linuxrc\n").is_err());
    }

    fn entries(tar: &[u8]) -> Vec<(String, tar::EntryType, u32, Option<String>)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                )
            })
            .collect()
    }

    #[test]
    fn tarball_layout() {
        let applets = vec!["bin/sh".to_owned(), "usr/sbin/chroot".to_owned()];
        let tar = build_tar(b"\x7fELF-binary", &applets).unwrap();
        let e = entries(&tar);
        let names: Vec<&str> = e.iter().map(|(n, ..)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin/",
                "dev/",
                "etc/",
                "home/",
                "proc/",
                "root/",
                "sbin/",
                "sys/",
                "tmp/",
                "usr/",
                "usr/bin/",
                "usr/sbin/",
                "var/",
                "bin/busybox",
                "bin/sh",
                "usr/sbin/chroot",
                "etc/passwd",
                "etc/group"
            ]
        );
        let tmp = e.iter().find(|(n, ..)| n == "tmp/").unwrap();
        assert_eq!(tmp.2, 0o1777);
        let sh = e.iter().find(|(n, ..)| n == "bin/sh").unwrap();
        assert_eq!(sh.1, tar::EntryType::Symlink);
        assert_eq!(sh.3.as_deref(), Some("/bin/busybox"));
        // Reproducible.
        assert_eq!(tar, build_tar(b"\x7fELF-binary", &applets).unwrap());
    }

    /// The whole path with the busybox-static this machine has (Debian:
    /// `/bin/busybox`); said loudly and skipped where it is missing.
    #[test]
    fn imports_the_host_busybox() {
        let busybox = Path::new(DEFAULT_BUSYBOX);
        if !busybox.exists() {
            eprintln!("SKIP imports_the_host_busybox: no {DEFAULT_BUSYBOX} (apt-get install busybox-static)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("images"),
            StoreOptions {
                durable: false,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let image = import_demo_image(&store, busybox).unwrap();
        assert_eq!(image.layers.len(), 1);
        let layer = &image.layers[0];
        assert!(layer.join("bin/busybox").is_file());
        assert_eq!(
            std::fs::read_link(layer.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert!(image.applets > 100, "{}", image.applets);
        // The same binary gives the same layer (the image ID differs: the
        // config records when it was imported).
        let again = import_demo_image(&store, busybox).unwrap();
        assert_eq!(again.layers, image.layers);
    }
}
