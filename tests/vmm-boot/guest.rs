//! Builds what the boot test and the bench put beside moat-vmm: the test
//! initramfs (`init.c` as `/init`) and small static C helpers (`bootmeter.c`).
//! Shared by `tests/vmm_boot.rs` and `tests/bench/bench.rs` (included with
//! `#[path]`). Owns only the files it writes under the directory it is given.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a test guest part could not be built; each names the tool to install.
#[derive(Debug, thiserror::Error)]
pub enum GuestBuildError {
    #[error("create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run {tool} (make deps installs {package}): {source}")]
    Spawn {
        tool: &'static str,
        package: &'static str,
        source: std::io::Error,
    },
    #[error("cc -static {}: {stderr}", src.display())]
    Compile { src: PathBuf, stderr: String },
    #[error("cpio exited with {0}")]
    Cpio(std::process::ExitStatus),
}

/// Compiles the C program `src` (from `tests/vmm-boot/`) to the static binary
/// `out`.
pub fn cc_static(src: &Path, out: &Path) -> Result<(), GuestBuildError> {
    let cc = Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(out)
        .arg(src)
        .output()
        .map_err(|source| GuestBuildError::Spawn {
            tool: "cc",
            package: "build-essential",
            source,
        })?;
    if !cc.status.success() {
        return Err(GuestBuildError::Compile {
            src: src.to_path_buf(),
            stderr: String::from_utf8_lossy(&cc.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Builds the test initramfs (just `/init`, from `tests/vmm-boot/init.c`; the
/// kernel's built-in initramfs provides `/dev/console`) as `dir/initrd.cpio`.
pub fn build_initrd(root: &Path, dir: &Path) -> Result<PathBuf, GuestBuildError> {
    let staging = dir.join("initrd-root");
    std::fs::create_dir_all(&staging).map_err(|source| GuestBuildError::Create {
        path: staging.clone(),
        source,
    })?;
    cc_static(&root.join("tests/vmm-boot/init.c"), &staging.join("init"))?;
    let initrd = dir.join("initrd.cpio");
    let out = std::fs::File::create(&initrd).map_err(|source| GuestBuildError::Create {
        path: initrd.clone(),
        source,
    })?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("echo init | cpio -o -H newc -R 0:0 --quiet")
        .current_dir(&staging)
        .stdout(out)
        .status()
        .map_err(|source| GuestBuildError::Spawn {
            tool: "cpio",
            package: "cpio",
            source,
        })?;
    if !status.success() {
        return Err(GuestBuildError::Cpio(status));
    }
    Ok(initrd)
}
