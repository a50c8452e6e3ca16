//! The system-call seam: the narrow set of kernel operations the init sequence and the
//! rootfs builder use (mount, umount, mkdir, write a file, read a file, reboot), behind
//! the [`Sys`] trait, with the real implementation [`LinuxSys`] and, for tests, a
//! [`RecordingSys`] that records every call and answers reads from a table.
//! Container creation itself goes through libcontainer, not through this seam. This
//! module must not decide anything; it only performs or records the calls.

use std::fmt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// A failed system call, naming the operation and the object.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct SysError {
    pub op: &'static str,
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

impl SysError {
    pub fn new(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self {
            op,
            path: path.display().to_string(),
            source,
        }
    }

    fn nix(op: &'static str, path: &Path, errno: nix::errno::Errno) -> Self {
        Self::new(op, path, std::io::Error::from(errno))
    }

    /// The errno, when the failure came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Kernel operations used by the init sequence and the rootfs builder.
pub trait Sys: Send + Sync + fmt::Debug {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), SysError>;
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), SysError>;
    /// `mkdir -p` with `mode` for the directories it creates.
    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<(), SysError>;
    /// Creates or truncates `path` and writes `data`, with `mode` if created.
    fn write_file(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), SysError>;
    fn read_file(&self, path: &Path) -> Result<Vec<u8>, SysError>;
    /// The device id (`st_dev`) of the file system `path` is on.
    fn device_of(&self, path: &Path) -> Result<u64, SysError>;
    /// Writes one byte at physical address `addr` through `/dev/mem` (an MMIO write:
    /// the page is mapped, because `write(2)` on `/dev/mem` only reaches RAM).
    fn poke_phys(&self, addr: u64, value: u8) -> Result<(), SysError>;
    fn chdir(&self, path: &Path) -> Result<(), SysError>;
    fn chroot(&self, path: &Path) -> Result<(), SysError>;
    fn sync(&self);
    /// Sets network interface `name` up (used for `lo`).
    fn link_up(&self, name: &str) -> Result<(), SysError>;
    /// Restarts the machine; with `reboot=k` on the kernel command line this ends the
    /// VMM. Returns only on failure.
    fn reboot(&self) -> SysError;
}

/// The real thing.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSys;

impl Sys for LinuxSys {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), SysError> {
        tracing::debug!(source, target = %target.display(), ?fstype, ?flags, ?data, "mount");
        nix::mount::mount(Some(source), target, fstype, flags, data)
            .map_err(|e| SysError::nix("mount", target, e))
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), SysError> {
        tracing::debug!(target = %target.display(), ?flags, "umount");
        nix::mount::umount2(target, flags).map_err(|e| SysError::nix("umount", target, e))
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<(), SysError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| SysError::new("create directory", path, e))
    }

    fn write_file(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), SysError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(|e| SysError::new("open", path, e))?;
        f.write_all(data)
            .map_err(|e| SysError::new("write", path, e))
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>, SysError> {
        std::fs::read(path).map_err(|e| SysError::new("read", path, e))
    }

    fn device_of(&self, path: &Path) -> Result<u64, SysError> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path)
            .map(|m| m.dev())
            .map_err(|e| SysError::new("stat", path, e))
    }

    fn poke_phys(&self, addr: u64, value: u8) -> Result<(), SysError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = Path::new("/dev/mem");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open(path)
            .map_err(|e| SysError::new("open", path, e))?;
        // The mapping's offset must be page-aligned (4 KiB on x86_64, up to 64 KiB on
        // arm64).
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let len = usize::try_from(page).unwrap_or(4096);
        let base = addr & !(page - 1);
        let offset = usize::try_from(addr - base).unwrap_or(0);
        let off = libc::off_t::try_from(base).map_err(|_| {
            SysError::new("map", path, std::io::Error::from_raw_os_error(libc::EINVAL))
        })?;
        // SAFETY: a fresh shared mapping of one page of /dev/mem; checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(SysError::new("map", path, std::io::Error::last_os_error()));
        }
        // SAFETY: `offset` < `len`, inside the mapping made above; a volatile write is
        // the MMIO access the VMM traps.
        unsafe {
            std::ptr::write_volatile(p.cast::<u8>().add(offset), value);
            libc::munmap(p, len);
        }
        Ok(())
    }

    fn chdir(&self, path: &Path) -> Result<(), SysError> {
        nix::unistd::chdir(path).map_err(|e| SysError::nix("chdir", path, e))
    }

    fn chroot(&self, path: &Path) -> Result<(), SysError> {
        nix::unistd::chroot(path).map_err(|e| SysError::nix("chroot", path, e))
    }

    fn sync(&self) {
        nix::unistd::sync();
    }

    fn link_up(&self, name: &str) -> Result<(), SysError> {
        link_up(name).map_err(|e| SysError::new("set link up", Path::new(name), e))
    }

    fn reboot(&self) -> SysError {
        match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
            Err(e) => SysError::nix("reboot", Path::new("/"), e),
            // `reboot` returns `Infallible` on success, so this arm cannot be taken.
            Ok(never) => match never {},
        }
    }
}

/// `ip link set <name> up` through `SIOCSIFFLAGS`.
fn link_up(name: &str) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: SIOCGIFFLAGS reads and writes the `ifreq` we own, sized as the kernel expects.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the `ifru_flags` member of the union is the valid one.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads the `ifreq`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: String,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount {
        target: PathBuf,
    },
    MkdirAll {
        path: PathBuf,
        mode: u32,
    },
    WriteFile {
        path: PathBuf,
        data: Vec<u8>,
        mode: u32,
    },
    ReadFile {
        path: PathBuf,
    },
    DeviceOf {
        path: PathBuf,
    },
    PokePhys {
        addr: u64,
        value: u8,
    },
    Chdir {
        path: PathBuf,
    },
    Chroot {
        path: PathBuf,
    },
    Sync,
    LinkUp {
        name: String,
    },
    Reboot,
}

/// Records calls; `read_file` answers from [`RecordingSys::set_file`], and any call can
/// be made to fail with [`RecordingSys::fail`].
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug, Default)]
pub struct RecordingSys {
    calls: std::sync::Mutex<Vec<Call>>,
    files: std::sync::Mutex<std::collections::HashMap<PathBuf, Vec<u8>>>,
    devices: std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>,
    failures: std::sync::Mutex<Vec<(&'static str, PathBuf, i32)>>,
}

#[cfg(any(test, feature = "test-utils"))]
impl RecordingSys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Content `read_file(path)` returns.
    pub fn set_file(&self, path: impl Into<PathBuf>, data: impl Into<Vec<u8>>) {
        crate::util::lock(&self.files).insert(path.into(), data.into());
    }

    /// Device id `device_of(path)` returns (default 1).
    pub fn set_device(&self, path: impl Into<PathBuf>, dev: u64) {
        crate::util::lock(&self.devices).insert(path.into(), dev);
    }

    /// Makes operation `op` ("mount", "write", ...) on `path` fail with `errno`.
    pub fn fail(&self, op: &'static str, path: impl Into<PathBuf>, errno: i32) {
        crate::util::lock(&self.failures).push((op, path.into(), errno));
    }

    pub fn calls(&self) -> Vec<Call> {
        crate::util::lock(&self.calls).clone()
    }

    /// Only the mount calls, as `(target, fstype, data)`.
    pub fn mounts(&self) -> Vec<(PathBuf, Option<String>, Option<String>)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Mount {
                    target,
                    fstype,
                    data,
                    ..
                } => Some((target, fstype, data)),
                _ => None,
            })
            .collect()
    }

    fn record(&self, call: Call) {
        crate::util::lock(&self.calls).push(call);
    }

    fn check(&self, op: &'static str, path: &Path) -> Result<(), SysError> {
        let failures = crate::util::lock(&self.failures);
        match failures.iter().find(|(o, p, _)| *o == op && p == path) {
            Some((_, _, errno)) => Err(SysError::new(
                op,
                path,
                std::io::Error::from_raw_os_error(*errno),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(any(test, feature = "test-utils"))]
impl Sys for RecordingSys {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), SysError> {
        self.record(Call::Mount {
            source: source.to_owned(),
            target: target.to_owned(),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        });
        self.check("mount", target)
    }

    fn umount(&self, target: &Path, _flags: MntFlags) -> Result<(), SysError> {
        self.record(Call::Umount {
            target: target.to_owned(),
        });
        self.check("umount", target)
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<(), SysError> {
        self.record(Call::MkdirAll {
            path: path.to_owned(),
            mode,
        });
        self.check("create directory", path)
    }

    fn write_file(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), SysError> {
        self.record(Call::WriteFile {
            path: path.to_owned(),
            data: data.to_owned(),
            mode,
        });
        self.check("write", path)?;
        crate::util::lock(&self.files).insert(path.to_owned(), data.to_owned());
        Ok(())
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>, SysError> {
        self.record(Call::ReadFile {
            path: path.to_owned(),
        });
        self.check("read", path)?;
        crate::util::lock(&self.files)
            .get(path)
            .cloned()
            .ok_or_else(|| {
                SysError::new(
                    "read",
                    path,
                    std::io::Error::from_raw_os_error(libc::ENOENT),
                )
            })
    }

    fn device_of(&self, path: &Path) -> Result<u64, SysError> {
        self.record(Call::DeviceOf {
            path: path.to_owned(),
        });
        self.check("stat", path)?;
        Ok(crate::util::lock(&self.devices)
            .get(path)
            .copied()
            .unwrap_or(1))
    }

    fn poke_phys(&self, addr: u64, value: u8) -> Result<(), SysError> {
        self.record(Call::PokePhys { addr, value });
        self.check("map", Path::new("/dev/mem"))
    }

    fn chdir(&self, path: &Path) -> Result<(), SysError> {
        self.record(Call::Chdir {
            path: path.to_owned(),
        });
        self.check("chdir", path)
    }

    fn chroot(&self, path: &Path) -> Result<(), SysError> {
        self.record(Call::Chroot {
            path: path.to_owned(),
        });
        self.check("chroot", path)
    }

    fn sync(&self) {
        self.record(Call::Sync);
    }

    fn link_up(&self, name: &str) -> Result<(), SysError> {
        self.record(Call::LinkUp {
            name: name.to_owned(),
        });
        self.check("set link up", Path::new(name))
    }

    fn reboot(&self) -> SysError {
        self.record(Call::Reboot);
        SysError::new(
            "reboot",
            Path::new("/"),
            std::io::Error::from_raw_os_error(libc::EPERM),
        )
    }
}
