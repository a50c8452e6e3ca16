//! A container's root file system as the agent builds it before libcontainer runs: the
//! overlayfs over the image layers and the writable layer, and the Docker-style
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` files that are bind-mounted
//! into it. It owns the overlay option string and the files' formats; it must not
//! create processes or namespaces. Kernel calls go through the [`Sys`] seam.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use oci_spec::runtime::{Mount, MountBuilder};

use crate::protocol::{DnsConfig, EtcFiles, RootfsLayers};
use crate::sys::{Sys, SysError};
use crate::util::is_clean_absolute;

/// The kernel copies mount data into one page; longer overlay options are refused.
pub const MAX_MOUNT_DATA: usize = 4095;

/// Rootfs failures.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("overlay: no layers given")]
    NoLayers,
    #[error("overlay {what} {path:?}: {why}")]
    BadPath {
        what: &'static str,
        path: String,
        why: &'static str,
    },
    #[error("overlay options are {len} bytes, more than the kernel's {MAX_MOUNT_DATA}: too many layers or too long paths")]
    OptionsTooLong { len: usize },
    #[error("overlay upperdir {upper} and workdir {work} are on different file systems")]
    DifferentFs { upper: String, work: String },
    #[error("build rootfs: {0}")]
    Sys(#[from] SysError),
    #[error("etc file {what}: {why}")]
    BadEtc { what: &'static str, why: String },
}

fn check_overlay_path(what: &'static str, path: &str) -> Result<(), RootfsError> {
    let bad = |why| RootfsError::BadPath {
        what,
        path: path.to_owned(),
        why,
    };
    if !is_clean_absolute(Path::new(path)) {
        return Err(bad("must be a clean absolute path"));
    }
    // ',' separates overlay options, ':' separates lower dirs, '\\' escapes them and
    // '=' is misread by some kernels: none may appear in a path, or the option string
    // would say something else than the host meant.
    if path
        .bytes()
        .any(|b| matches!(b, b',' | b':' | b'\\' | b'=') || b.is_ascii_control())
    {
        return Err(bad("contains ',', ':', '\\', '=' or a control character"));
    }
    Ok(())
}

/// The overlayfs mount options for `layers` (lowest layer first, as in an image
/// manifest). overlayfs wants the *top* lower layer first in `lowerdir=`, so the order
/// is reversed here.
pub fn overlay_options(layers: &RootfsLayers) -> Result<String, RootfsError> {
    if layers.layers.is_empty() {
        return Err(RootfsError::NoLayers);
    }
    for l in &layers.layers {
        check_overlay_path("layer", l)?;
    }
    check_overlay_path("upperdir", &layers.upper)?;
    check_overlay_path("workdir", &layers.work)?;
    let lower: Vec<&str> = layers.layers.iter().rev().map(String::as_str).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        layers.upper,
        layers.work
    );
    if options.len() > MAX_MOUNT_DATA {
        return Err(RootfsError::OptionsTooLong { len: options.len() });
    }
    Ok(options)
}

/// Creates the upper and work directories, checks they share a file system, and
/// mounts the overlay on `target`.
pub fn mount_overlay(
    sys: &dyn Sys,
    layers: &RootfsLayers,
    target: &Path,
) -> Result<(), RootfsError> {
    let options = overlay_options(layers)?;
    let upper = Path::new(&layers.upper);
    let work = Path::new(&layers.work);
    sys.mkdir_all(upper, 0o755)?;
    sys.mkdir_all(work, 0o700)?;
    if sys.device_of(upper)? != sys.device_of(work)? {
        return Err(RootfsError::DifferentFs {
            upper: layers.upper.clone(),
            work: layers.work.clone(),
        });
    }
    sys.mkdir_all(target, 0o755)?;
    sys.mount(
        "overlay",
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(&options),
    )?;
    Ok(())
}

/// Unmounts a container's rootfs (lazily: a process that still holds it keeps its view).
pub fn unmount(sys: &dyn Sys, target: &Path) -> Result<(), SysError> {
    sys.umount(target, MntFlags::MNT_DETACH)
}

/// `/etc/hosts` as Docker writes it.
pub fn hosts_file(etc: &EtcFiles) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for h in &etc.extra_hosts {
        s.push_str(&format!("{}\t{}\n", h.ip, h.names.join(" ")));
    }
    if let Some(ip) = &etc.ip {
        s.push_str(&format!("{ip}\t{}\n", etc.hostname));
    }
    s
}

/// `/etc/hostname`.
pub fn hostname_file(etc: &EtcFiles) -> String {
    format!("{}\n", etc.hostname)
}

/// Docker's fallback when the host has no usable nameserver.
pub const DEFAULT_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// `/etc/resolv.conf`.
pub fn resolv_conf(dns: &DnsConfig) -> String {
    let mut s = String::from("# Generated by moat.\n");
    if dns.nameservers.is_empty() {
        for ns in DEFAULT_NAMESERVERS {
            s.push_str(&format!("nameserver {ns}\n"));
        }
    } else {
        for ns in &dns.nameservers {
            s.push_str(&format!("nameserver {ns}\n"));
        }
    }
    if !dns.search.is_empty() {
        s.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

fn check_etc(etc: &EtcFiles) -> Result<(), RootfsError> {
    let bad = |what, why: String| RootfsError::BadEtc { what, why };
    let word_ok =
        |w: &str| !w.is_empty() && !w.chars().any(|c| c.is_whitespace() || c.is_control());
    if !word_ok(&etc.hostname) || etc.hostname.len() > 253 {
        return Err(bad(
            "hostname",
            format!("{:?} is not a host name", etc.hostname),
        ));
    }
    let ips = etc.ip.iter().chain(etc.extra_hosts.iter().map(|h| &h.ip));
    for ip in ips {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(bad("hosts", format!("{ip:?} is not an IP address")));
        }
    }
    for h in &etc.extra_hosts {
        if h.names.is_empty() || !h.names.iter().all(|n| word_ok(n)) {
            return Err(bad(
                "hosts",
                format!("bad names for {}: {:?}", h.ip, h.names),
            ));
        }
    }
    for ns in &etc.dns.nameservers {
        if ns.parse::<std::net::IpAddr>().is_err() {
            return Err(bad(
                "resolv.conf",
                format!("nameserver {ns:?} is not an IP address"),
            ));
        }
    }
    if !etc
        .dns
        .search
        .iter()
        .chain(&etc.dns.options)
        .all(|w| word_ok(w))
    {
        return Err(bad(
            "resolv.conf",
            "search and options must be single words".into(),
        ));
    }
    Ok(())
}

/// Writes the three files into `dir` and returns the bind mounts that put them at
/// `/etc/...` in the container. A destination the spec already mounts is left to the
/// spec (a user's bind mount wins, as with Docker).
pub fn write_etc_files(
    sys: &dyn Sys,
    dir: &Path,
    etc: &EtcFiles,
    existing: &[Mount],
) -> Result<Vec<Mount>, RootfsError> {
    check_etc(etc)?;
    sys.mkdir_all(dir, 0o755)?;
    let files: [(&str, String); 3] = [
        ("hosts", hosts_file(etc)),
        ("hostname", hostname_file(etc)),
        ("resolv.conf", resolv_conf(&etc.dns)),
    ];
    let mut mounts = Vec::new();
    for (name, content) in files {
        let source = dir.join(name);
        sys.write_file(&source, content.as_bytes(), 0o644)?;
        let destination = PathBuf::from("/etc").join(name);
        if existing.iter().any(|m| m.destination() == &destination) {
            continue;
        }
        let mount = MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_owned(), "rprivate".to_owned()])
            .build()
            .map_err(|e| RootfsError::BadEtc {
                what: "mount",
                why: e.to_string(),
            })?;
        mounts.push(mount);
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::HostEntry;
    use crate::sys::RecordingSys;

    fn layers(n: usize) -> RootfsLayers {
        RootfsLayers {
            layers: (0..n).map(|i| format!("/mnt/moat/layers/{i}")).collect(),
            upper: "/mnt/moat/rw/upper".into(),
            work: "/mnt/moat/rw/work".into(),
        }
    }

    #[test]
    fn lowerdir_lists_the_top_layer_first() {
        assert_eq!(
            overlay_options(&layers(3)).unwrap(),
            "lowerdir=/mnt/moat/layers/2:/mnt/moat/layers/1:/mnt/moat/layers/0,\
             upperdir=/mnt/moat/rw/upper,workdir=/mnt/moat/rw/work"
        );
        assert_eq!(
            overlay_options(&layers(1)).unwrap(),
            "lowerdir=/mnt/moat/layers/0,upperdir=/mnt/moat/rw/upper,workdir=/mnt/moat/rw/work"
        );
    }

    #[test]
    fn hostile_layer_paths_are_refused() {
        for bad in [
            "relative/x",
            "/a/../b",
            "/a,upperdir=/etc",
            "/a:/b",
            "/a\\b",
            "/a\nb",
            "/a=b",
        ] {
            let mut l = layers(2);
            l.layers[1] = bad.into();
            assert!(
                matches!(overlay_options(&l), Err(RootfsError::BadPath { .. })),
                "{bad:?}"
            );
        }
        let mut l = layers(1);
        l.upper = "/x,lowerdir=/".into();
        assert!(overlay_options(&l).is_err());
        assert!(matches!(
            overlay_options(&layers(0)),
            Err(RootfsError::NoLayers)
        ));
    }

    #[test]
    fn too_many_layers_for_one_page() {
        let mut l = layers(1);
        l.layers = (0..200)
            .map(|i| format!("/mnt/moat/layers/sha256-{i:064}"))
            .collect();
        assert!(matches!(
            overlay_options(&l),
            Err(RootfsError::OptionsTooLong { .. })
        ));
    }

    #[test]
    fn mount_overlay_creates_dirs_and_mounts() {
        let sys = RecordingSys::new();
        mount_overlay(&sys, &layers(2), Path::new("/run/moat/c1/rootfs")).unwrap();
        let mounts = sys.mounts();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].0, Path::new("/run/moat/c1/rootfs"));
        assert_eq!(mounts[0].1.as_deref(), Some("overlay"));
        assert!(mounts[0]
            .2
            .as_deref()
            .unwrap()
            .starts_with("lowerdir=/mnt/moat/layers/1:/mnt/moat/layers/0,"));
    }

    #[test]
    fn upper_and_work_on_different_fs_is_refused() {
        let sys = RecordingSys::new();
        sys.set_device("/mnt/moat/rw/upper", 7);
        sys.set_device("/mnt/moat/rw/work", 8);
        let err = mount_overlay(&sys, &layers(1), Path::new("/r")).unwrap_err();
        assert!(matches!(err, RootfsError::DifferentFs { .. }), "{err}");
        assert!(sys.mounts().is_empty());
    }

    fn etc() -> EtcFiles {
        EtcFiles {
            hostname: "web1".into(),
            ip: Some("172.17.0.2".into()),
            extra_hosts: vec![HostEntry {
                ip: "10.0.0.5".into(),
                names: vec!["db".into(), "db.local".into()],
            }],
            dns: DnsConfig {
                nameservers: vec!["10.0.0.1".into()],
                search: vec!["example.com".into()],
                options: vec!["ndots:2".into()],
            },
        }
    }

    #[test]
    fn docker_style_files() {
        let e = etc();
        assert_eq!(
            hosts_file(&e),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
             ff02::2\tip6-allrouters\n10.0.0.5\tdb db.local\n172.17.0.2\tweb1\n"
        );
        assert_eq!(hostname_file(&e), "web1\n");
        assert_eq!(
            resolv_conf(&e.dns),
            "# Generated by moat.\nnameserver 10.0.0.1\nsearch example.com\noptions ndots:2\n"
        );
        assert_eq!(
            resolv_conf(&DnsConfig::default()),
            "# Generated by moat.\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
    }

    #[test]
    fn etc_files_are_written_and_bind_mounted() {
        let sys = RecordingSys::new();
        let user_mount = MountBuilder::default()
            .destination("/etc/resolv.conf")
            .typ("bind")
            .source("/mnt/moat/volumes/r")
            .build()
            .unwrap();
        let mounts =
            write_etc_files(&sys, Path::new("/run/moat/c1/etc"), &etc(), &[user_mount]).unwrap();
        let dests: Vec<_> = mounts.iter().map(|m| m.destination().clone()).collect();
        assert_eq!(
            dests,
            [PathBuf::from("/etc/hosts"), PathBuf::from("/etc/hostname")]
        );
        assert_eq!(
            mounts[0].source().as_deref(),
            Some(Path::new("/run/moat/c1/etc/hosts"))
        );
        assert_eq!(
            sys.read_file(Path::new("/run/moat/c1/etc/hostname"))
                .unwrap(),
            b"web1\n"
        );
    }

    #[test]
    fn hostile_etc_values_are_refused() {
        let mut e = etc();
        e.hostname = "a\nnameserver 1.2.3.4".into();
        assert!(write_etc_files(&RecordingSys::new(), Path::new("/d"), &e, &[]).is_err());
        let mut e = etc();
        e.dns.nameservers = vec!["1.2.3.4\nsearch evil".into()];
        assert!(write_etc_files(&RecordingSys::new(), Path::new("/d"), &e, &[]).is_err());
        let mut e = etc();
        e.extra_hosts[0].ip = "not-an-ip".into();
        assert!(write_etc_files(&RecordingSys::new(), Path::new("/d"), &e, &[]).is_err());
    }
}
