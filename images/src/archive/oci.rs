//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/`), as a
//! directory or a tarball, both ways. Manifests are kept byte for byte, so an
//! image keeps its manifest digest through export and import. Tags go in the
//! `org.opencontainers.image.ref.name` annotation (the tag, as skopeo and umoci
//! read it) and `io.containerd.image.name` (the full name, as containerd and
//! Docker 25+ read it). Owns the layout format only.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use super::{
    doc_err, invalid, io_err, read_verified, store_err, ArchiveError, DirSource, Loaded, Source,
};
use crate::digest::Digest;
use crate::fsutil;
use crate::manifest::{
    self, Descriptor, ImageConfig, Index, Manifest, PlatformDoc, MAX_DOCUMENT_SIZE,
};
use crate::media::{self, ManifestKind};
use crate::platform::Platform;
use crate::reference::ImageRef;
use crate::store::{ImageRecord, LayerRef, Store};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Imports an OCI layout directory. `name` (a repository such as `app` or
/// `host/app`) is combined with each entry's `ref.name` tag when the layout does
/// not carry full names.
pub fn import_oci_dir(
    store: &Store,
    dir: &Path,
    name: Option<&str>,
) -> Result<Vec<Loaded>, ArchiveError> {
    let src = DirSource::open("import", dir)?;
    import_from("import", store, &src, name)
}

pub(super) fn import_from(
    op: &'static str,
    store: &Store,
    src: &dyn Source,
    name: Option<&str>,
) -> Result<Vec<Loaded>, ArchiveError> {
    let layout = src.read_small("oci-layout", 4096)?;
    let v: serde_json::Value =
        serde_json::from_slice(&layout).map_err(|e| invalid(op, format!("oci-layout: {e}")))?;
    if v.get("imageLayoutVersion").and_then(|x| x.as_str()) != Some("1.0.0") {
        return Err(invalid(op, "oci-layout: imageLayoutVersion is not 1.0.0"));
    }
    let index =
        Index::parse(&src.read_small("index.json", MAX_DOCUMENT_SIZE)?).map_err(doc_err(op))?;
    let want = Platform::host();
    let mut out = Vec::new();
    for desc in &index.manifests {
        let tags = tags_for(op, desc, name)?;
        if let Some(l) = import_entry(op, store, src, desc, &want, &tags, 0)? {
            out.push(l);
        }
    }
    if out.is_empty() {
        return Err(invalid(op, format!("no image for {want} in the layout")));
    }
    Ok(out)
}

fn tags_for(
    op: &'static str,
    desc: &Descriptor,
    name: Option<&str>,
) -> Result<Vec<ImageRef>, ArchiveError> {
    let ann = desc.annotations.clone().unwrap_or_default();
    if let Some(full) = ann.get(CONTAINERD_NAME) {
        let r = ImageRef::parse(full).map_err(|e| invalid(op, e.to_string()))?;
        if r.digest().is_none() {
            return Ok(vec![r]);
        }
    }
    match (ann.get(REF_NAME), name) {
        (Some(tag), Some(repo)) => {
            Ok(vec![ImageRef::parse(&format!("{repo}:{tag}"))
                .map_err(|e| invalid(op, e.to_string()))?])
        }
        (Some(r), None) if r.contains('/') || r.contains(':') => {
            let r = ImageRef::parse(r).map_err(|e| invalid(op, e.to_string()))?;
            Ok(if r.digest().is_none() {
                vec![r]
            } else {
                vec![]
            })
        }
        (None, Some(repo)) => Ok(vec![
            ImageRef::parse(repo).map_err(|e| invalid(op, e.to_string()))?
        ]),
        _ => Ok(vec![]),
    }
}

fn import_entry(
    op: &'static str,
    store: &Store,
    src: &dyn Source,
    desc: &Descriptor,
    want: &Platform,
    tags: &[ImageRef],
    depth: u32,
) -> Result<Option<Loaded>, ArchiveError> {
    if depth > 4 {
        return Err(invalid(op, "indexes nested more than 4 deep"));
    }
    if desc.size > MAX_DOCUMENT_SIZE {
        return Err(invalid(
            op,
            format!("{}: manifest larger than 8 MiB", desc.digest),
        ));
    }
    let data = read_verified(
        op,
        src,
        &blob_path(&desc.digest),
        &desc.digest,
        MAX_DOCUMENT_SIZE,
    )?;
    match manifest::classify(&data, Some(&desc.media_type)).map_err(doc_err(op))? {
        ManifestKind::Index => {
            let idx = Index::parse(&data).map_err(doc_err(op))?;
            match idx.select(want) {
                Some(child) => import_entry(op, store, src, child, want, tags, depth + 1),
                None => Ok(None),
            }
        }
        ManifestKind::Manifest => {
            if let Some(p) = &desc.platform {
                if !want.matches(&p.platform()) {
                    return Ok(None);
                }
            }
            let m = Manifest::parse(&data).map_err(doc_err(op))?;
            let config_bytes = read_verified(
                op,
                src,
                &blob_path(&m.config.digest),
                &m.config.digest,
                MAX_DOCUMENT_SIZE,
            )?;
            let config = ImageConfig::parse(&config_bytes).map_err(doc_err(op))?;
            if config.rootfs.diff_ids.len() != m.layers.len() {
                return Err(invalid(
                    op,
                    format!(
                        "{}: config and manifest disagree on the layer count",
                        desc.digest
                    ),
                ));
            }
            let mut lease = store.lease();
            let mut layers = Vec::new();
            for (l, diff) in m.layers.iter().zip(&config.rootfs.diff_ids) {
                let _g = store.lock_key_blocking(&crate::store::layer_key(diff));
                let r = src.open(&blob_path(&l.digest))?;
                let got = store
                    .ingest_layer(
                        r,
                        Some(&l.media_type),
                        Some((&l.digest, l.size)),
                        Some(diff),
                        &mut lease,
                    )
                    .map_err(store_err(op))?;
                layers.push(LayerRef {
                    diff_id: diff.clone(),
                    blob: got.blob,
                    media_type: l.media_type.clone(),
                    blob_size: l.size,
                });
            }
            store
                .put_blob(&config_bytes, &mut lease)
                .map_err(store_err(op))?;
            let md = store.put_blob(&data, &mut lease).map_err(store_err(op))?;
            let record = ImageRecord {
                id: m.config.digest.clone(),
                config_media_type: m.config.media_type.clone(),
                manifest: md,
                manifest_media_type: m.media_type_or_default().to_owned(),
                index: None,
                layers,
                repo_digests: Default::default(),
                platform: config.platform(),
                added: crate::inspect::format_time(&chrono::Utc::now()),
                last_tag_time: None,
            };
            store.add_image(record, tags).map_err(store_err(op))?;
            Ok(Some(Loaded {
                id: m.config.digest.clone(),
                tags: tags.to_vec(),
            }))
        }
    }
}

/// What an export writes: (path in the layout, source blob or inline bytes).
enum Item {
    Blob(Digest),
    Bytes(Vec<u8>),
}

fn plan(store: &Store, names: &[&str]) -> Result<Vec<(String, Item)>, ArchiveError> {
    const OP: &str = "export";
    let mut items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut manifests = Vec::new();
    for n in names {
        let id = store.resolve(n).map_err(store_err(OP))?;
        let img = store.get(&id).map_err(store_err(OP))?;
        let mut blobs = vec![img.manifest.clone(), img.id.clone()];
        blobs.extend(img.layers.iter().map(|l| l.blob.clone()));
        for b in blobs {
            if seen.insert(b.clone()) {
                items.push((blob_path(&b), Item::Blob(b)));
            }
        }
        let mut ann = BTreeMap::new();
        if let Ok(r) = ImageRef::parse(n) {
            if r.digest().is_none() && store.tags(&id).contains(&r.to_string()) {
                ann.insert(REF_NAME.to_owned(), r.tag().unwrap_or("latest").to_owned());
                ann.insert(CONTAINERD_NAME.to_owned(), r.to_string());
            }
        }
        manifests.push(Descriptor {
            media_type: img.manifest_media_type.clone(),
            digest: img.manifest.clone(),
            size: store.blob_size(&img.manifest).map_err(store_err(OP))?,
            platform: Some(PlatformDoc::from(&img.platform)),
            annotations: if ann.is_empty() { None } else { Some(ann) },
            urls: None,
        });
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.into()),
        manifests,
        annotations: None,
    };
    let index = serde_json::to_vec(&index).map_err(|e| invalid(OP, e.to_string()))?;
    items.push((
        "oci-layout".into(),
        Item::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
    ));
    items.push(("index.json".into(), Item::Bytes(index)));
    Ok(items)
}

/// Writes the images named in `names` as an OCI layout directory `dir` (created
/// if missing; existing blobs are kept, `index.json` is replaced).
pub fn export_oci_dir(store: &Store, names: &[&str], dir: &Path) -> Result<(), ArchiveError> {
    const OP: &str = "export";
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err(OP, blobs.display().to_string()))?;
    for (path, item) in plan(store, names)? {
        let dest = dir.join(&path);
        match item {
            Item::Blob(d) => {
                if dest.exists() {
                    continue;
                }
                let mut f = store.open_blob(&d).map_err(store_err(OP))?;
                let tmp = dest.with_extension("tmp");
                let mut out =
                    fs::File::create(&tmp).map_err(io_err(OP, tmp.display().to_string()))?;
                std::io::copy(&mut f, &mut out).map_err(io_err(OP, dest.display().to_string()))?;
                fs::rename(&tmp, &dest).map_err(io_err(OP, dest.display().to_string()))?;
            }
            Item::Bytes(b) => {
                fsutil::write_atomic(&dest, &b).map_err(io_err(OP, dest.display().to_string()))?
            }
        }
    }
    Ok(())
}

/// Writes the images named in `names` as an OCI layout tarball.
pub fn export_oci_tar<W: Write>(store: &Store, names: &[&str], w: W) -> Result<(), ArchiveError> {
    const OP: &str = "export";
    let mut tb = tar::Builder::new(w);
    let dir = |tb: &mut tar::Builder<W>, p: &str| -> Result<(), ArchiveError> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        tb.append_data(&mut h, p, &[][..])
            .map_err(io_err(OP, "write archive"))
    };
    dir(&mut tb, "blobs/")?;
    dir(&mut tb, "blobs/sha256/")?;
    for (path, item) in plan(store, names)? {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(0);
        match item {
            Item::Blob(d) => {
                let size = store.blob_size(&d).map_err(store_err(OP))?;
                h.set_size(size);
                let f = store.open_blob(&d).map_err(store_err(OP))?;
                tb.append_data(&mut h, &path, std::io::Read::take(f, size))
                    .map_err(io_err(OP, "write archive"))?;
            }
            Item::Bytes(b) => {
                h.set_size(b.len() as u64);
                tb.append_data(&mut h, &path, &b[..])
                    .map_err(io_err(OP, "write archive"))?;
            }
        }
    }
    tb.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_err(OP, "write archive"))?;
    Ok(())
}
