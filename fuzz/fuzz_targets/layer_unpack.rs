//! Layer unpack: tar streams through `unpack_layer` into an empty temp
//! directory, with tight limits. The first byte picks the input: odd, the rest
//! is the raw stream (plain, gzip or zstd, found by sniffing); even, the rest
//! decodes (`arbitrary`) to a list of entries written with the `tar` crate's
//! headers, with hostile names (`..`, absolute paths to a canary, paths through
//! symlinks), links, devices, PAX records, GNU long names and lying sizes,
//! optionally gzip-compressed. After each run: nothing beside the destination
//! changed (canary file, directory and symlink), and the destination holds no
//! device node other than 0/0 whiteouts.
#![no_main]

use std::io::Write;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use moat_fuzz::inputs::layer_unpack::*;
use moat_fuzz::tree::{assert_unchanged, device_nodes, snapshot};
use moat_images::unpack::{unpack_layer, DevicePolicy, UnpackLimits};

fn name(n: &Name, base: &Path) -> Vec<u8> {
    match n {
        Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()]
            .replace('@', &base.to_string_lossy())
            .into_bytes(),
        Name::Raw(b) => b.0.clone(),
    }
}

fn block(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

fn header(kind: u8, name: &[u8], link: &[u8], size: u64, e: &Entry) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        let n = name.len().min(100);
        old.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        old.linkname[..l].copy_from_slice(&link[..l]);
    }
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(size);
    h.set_mode(e.mode);
    h.set_uid(u64::from(e.uid));
    h.set_gid(u64::from(e.gid));
    h.set_mtime(1_600_000_000);
    if let Kind::Char { major, minor } = e.kind {
        let _ = h.set_device_major(u32::from(major));
        let _ = h.set_device_minor(u32::from(minor));
    }
    h.set_cksum();
    h
}

fn build(layer: &Layer, base: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in layer.entries.iter().take(32) {
        let name = name(&e.name, base);
        let link = name_or_empty(e, base);
        if !e.pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in e.pax.iter().take(8) {
                let rec_len = k.0.len() + v.0.len() + 3;
                let mut len = rec_len + rec_len.to_string().len();
                if (len).to_string().len() != rec_len.to_string().len() {
                    len += 1;
                }
                body.extend_from_slice(len.to_string().as_bytes());
                body.push(b' ');
                body.extend_from_slice(&k.0);
                body.push(b'=');
                body.extend_from_slice(&v.0);
                body.push(b'\n');
            }
            let h = header(b'x', b"PaxHeader", b"", body.len() as u64, e);
            out.extend_from_slice(h.as_bytes());
            block(&mut out, &body);
        }
        if e.gnu_long_name {
            let mut long = name.clone();
            long.push(0);
            let h = header(b'L', b"././@LongLink", b"", long.len() as u64, e);
            out.extend_from_slice(h.as_bytes());
            block(&mut out, &long);
        }
        let kind = match e.kind {
            Kind::File => b'0',
            Kind::Dir => b'5',
            Kind::Symlink => b'2',
            Kind::Hardlink => b'1',
            Kind::Char { .. } => b'3',
            Kind::Block => b'4',
            Kind::Fifo => b'6',
            Kind::Other(k) => k,
        };
        let size = e.size.map_or(e.data.0.len() as u64, u64::from);
        let h = header(kind, &name, &link, size, e);
        out.extend_from_slice(h.as_bytes());
        block(&mut out, &e.data.0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    if let Some(n) = layer.truncate {
        out.truncate(usize::from(n));
    }
    if layer.gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&out).unwrap();
        out = gz.finish().unwrap();
    }
    out
}

fn name_or_empty(e: &Entry, base: &Path) -> Vec<u8> {
    match e.kind {
        Kind::Symlink | Kind::Hardlink => name(&e.link, base),
        _ => Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    std::fs::write(base.join("canary"), b"host canary").unwrap();
    std::fs::create_dir(base.join("outside")).unwrap();
    std::os::unix::fs::symlink(base.join("outside"), base.join("out-link")).unwrap();
    let dest = base.join("dest");
    std::fs::create_dir(&dest).unwrap();
    let before = snapshot(&base, &[&dest]);

    let (stream, devices) = if mode % 2 == 1 {
        (rest.to_vec(), DevicePolicy::Refuse)
    } else {
        let Some(layer) = moat_fuzz::decode::<Layer>(rest) else {
            return;
        };
        let devices = if layer.skip_devices {
            DevicePolicy::Skip
        } else {
            DevicePolicy::Refuse
        };
        (build(&layer, &base), devices)
    };
    let limits = UnpackLimits {
        max_total_bytes: 1 << 20,
        max_entries: 256,
        max_path_len: 4096,
        max_pax_header_size: 1 << 16,
        devices,
    };
    let _ = unpack_layer(&stream[..], None, None, &dest, &limits);

    let after = snapshot(&base, &[&dest]);
    assert_unchanged("outside the destination", &before, &after);
    let nodes = device_nodes(&dest);
    assert!(nodes.is_empty(), "device nodes unpacked: {nodes:?}");
    assert!(
        !Path::new("/etc/moat-fuzz-escape").exists(),
        "an absolute path was unpacked"
    );
});
