//! `docker save` / `docker load` archives. Writes the legacy layout every Docker
//! version loads (`manifest.json`, `repositories`, `<id>.json` configs,
//! `<v1-id>/{VERSION,json,layer.tar}` with uncompressed layers); reads that
//! layout, Docker 25+'s (`manifest.json` pointing into `blobs/sha256/`, possibly
//! compressed layers) and, when there is no `manifest.json`, an OCI layout tarball.
//! Owns the Docker archive format only.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::{doc_err, invalid, io_err, store_err, ArchiveError, Loaded, Source, Staging, Verified};
use crate::build;
use crate::digest::Digest;
use crate::manifest::{ImageConfig, MAX_DOCUMENT_SIZE};
use crate::media;
use crate::reference::ImageRef;
use crate::store::{LayerRef, Store};

#[derive(Debug, Serialize, Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// `docker load`: reads a Docker archive (or an OCI layout tarball) from `r`,
/// gzip/zstd compressed or not, and records every image in it.
pub fn load<R: Read>(store: &Store, r: R) -> Result<Vec<Loaded>, ArchiveError> {
    const OP: &str = "load";
    let staged = Staging::read(OP, store, r)?;
    if !staged.exists("manifest.json") {
        if staged.exists("index.json") {
            return super::oci::import_from(OP, store, &staged, None);
        }
        return Err(invalid(
            OP,
            "neither manifest.json nor index.json in the archive",
        ));
    }
    let data = staged.read_small("manifest.json", MAX_DOCUMENT_SIZE)?;
    let entries: Vec<ManifestEntry> =
        serde_json::from_slice(&data).map_err(|e| invalid(OP, format!("manifest.json: {e}")))?;
    if entries.len() > 1000 {
        return Err(invalid(OP, "manifest.json lists more than 1000 images"));
    }
    let mut out = Vec::new();
    for entry in &entries {
        out.push(load_one(store, &staged, entry)?);
    }
    Ok(out)
}

fn load_one(
    store: &Store,
    src: &dyn Source,
    entry: &ManifestEntry,
) -> Result<Loaded, ArchiveError> {
    const OP: &str = "load";
    let config_path = super::norm(OP, &entry.config)?;
    let config_bytes = src.read_small(&config_path, MAX_DOCUMENT_SIZE)?;
    let config = ImageConfig::parse(&config_bytes).map_err(doc_err(OP))?;
    if config.rootfs.diff_ids.len() != entry.layers.len() {
        return Err(invalid(
            OP,
            format!(
                "{config_path}: config lists {} layers, manifest.json {}",
                config.rootfs.diff_ids.len(),
                entry.layers.len()
            ),
        ));
    }
    let mut tags = Vec::new();
    for t in entry.repo_tags.iter().flatten() {
        let r = ImageRef::parse(t).map_err(|e| invalid(OP, e.to_string()))?;
        if r.digest().is_some() {
            return Err(invalid(OP, format!("RepoTags entry {t:?} has a digest")));
        }
        tags.push(r);
    }
    let mut lease = store.lease();
    let mut layers = Vec::new();
    for (path, diff) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
        let path = super::norm(OP, path)?;
        let _g = store.lock_key_blocking(&crate::store::layer_key(diff));
        let r = src.open(&path)?;
        let l = store
            .ingest_layer(r, None, None, Some(diff), &mut lease)
            .map_err(store_err(OP))?;
        layers.push(LayerRef {
            diff_id: diff.clone(),
            blob: l.blob,
            media_type: media::oci_layer_type(l.compression).to_owned(),
            blob_size: l.blob_size,
        });
    }
    let id = build::commit_with_config(
        store,
        &config_bytes,
        media::OCI_CONFIG,
        &layers,
        &tags,
        &mut lease,
    )
    .map_err(store_err(OP))?;
    Ok(Loaded { id, tags })
}

/// The legacy v1 layer ID Docker's loader expects in directory names: any
/// stable hex string works; moat chains the diff-ids.
fn v1_id(parent: Option<&str>, diff: &Digest) -> String {
    Digest::of_bytes(format!("{}\n{diff}", parent.unwrap_or("")).as_bytes())
        .hex()
        .to_owned()
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    // Paths here are short ASCII (hex names); set_path cannot fail on them, but
    // handle it anyway.
    let _ = h.set_path(path);
    h.set_cksum();
    h
}

/// `docker save`: writes the images named in `names` (tags, digests or IDs) as one
/// Docker archive. Images named by tag carry that tag; images named by ID carry
/// none (as in Docker).
pub fn save<W: Write>(store: &Store, names: &[&str], w: W) -> Result<(), ArchiveError> {
    const OP: &str = "save";
    let mut order: Vec<Digest> = Vec::new();
    let mut tags: HashMap<Digest, Vec<String>> = HashMap::new();
    for n in names {
        let id = store.resolve(n).map_err(store_err(OP))?;
        if !order.contains(&id) {
            order.push(id.clone());
        }
        // Named by a tag it carries: save that tag (by ID or digest: none).
        let tag = ImageRef::parse(n)
            .ok()
            .filter(|r| r.digest().is_none() && store.tags(&id).contains(&r.to_string()));
        let e = tags.entry(id).or_default();
        if let Some(r) = tag {
            let fam = r.familiar();
            if !e.contains(&fam) {
                e.push(fam);
            }
        }
    }
    let mut tb = tar::Builder::new(w);
    let mut written_layers: std::collections::HashSet<String> = Default::default();
    let mut manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for id in &order {
        let img = store.get(id).map_err(store_err(OP))?;
        let config_bytes = store
            .read_blob(id, MAX_DOCUMENT_SIZE)
            .map_err(store_err(OP))?;
        let config = ImageConfig::parse(&config_bytes).map_err(doc_err(OP))?;
        let mut parent: Option<String> = None;
        let mut layer_paths = Vec::new();
        for l in &img.layers {
            let v1 = v1_id(parent.as_deref(), &l.diff_id);
            if written_layers.insert(v1.clone()) {
                let info = store.layer_info(&l.diff_id).map_err(store_err(OP))?;
                let mut h = header(&format!("{v1}/"), 0, 0o755, tar::EntryType::Directory);
                tb.append(&h, &[][..])
                    .map_err(io_err(OP, "write archive"))?;
                h = header(&format!("{v1}/VERSION"), 3, 0o644, tar::EntryType::Regular);
                tb.append(&h, &b"1.0"[..])
                    .map_err(io_err(OP, "write archive"))?;
                let mut json = serde_json::json!({
                    "id": v1,
                    "created": config.created.clone().unwrap_or_else(|| crate::inspect::ZERO_TIME.into()),
                    "container_config": {"Cmd": null},
                    "os": config.os,
                });
                if let Some(p) = &parent {
                    json["parent"] = serde_json::Value::String(p.clone());
                }
                let json = serde_json::to_vec(&json).map_err(|e| invalid(OP, e.to_string()))?;
                h = header(
                    &format!("{v1}/json"),
                    json.len() as u64,
                    0o644,
                    tar::EntryType::Regular,
                );
                tb.append(&h, &json[..])
                    .map_err(io_err(OP, "write archive"))?;
                let tar_stream = super::open_layer_tar(store, &l.blob).map_err(store_err(OP))?;
                let verified = Verified::new(tar_stream, info.tar_size, l.diff_id.clone());
                h = header(
                    &format!("{v1}/layer.tar"),
                    info.tar_size,
                    0o644,
                    tar::EntryType::Regular,
                );
                tb.append(&h, verified)
                    .map_err(io_err(OP, format!("write layer {}", l.diff_id)))?;
            }
            layer_paths.push(format!("{v1}/layer.tar"));
            parent = Some(v1);
        }
        let config_name = format!("{}.json", id.hex());
        let h = header(
            &config_name,
            config_bytes.len() as u64,
            0o644,
            tar::EntryType::Regular,
        );
        tb.append(&h, &config_bytes[..])
            .map_err(io_err(OP, "write archive"))?;
        let t = tags.get(id).cloned().unwrap_or_default();
        for tag in &t {
            if let (Ok(r), Some(top)) = (ImageRef::parse(tag), &parent) {
                repositories
                    .entry(r.familiar_name())
                    .or_default()
                    .insert(r.tag().unwrap_or("latest").to_owned(), top.clone());
            }
        }
        manifest.push(ManifestEntry {
            config: config_name,
            repo_tags: if t.is_empty() { None } else { Some(t) },
            layers: layer_paths,
        });
    }
    let m = serde_json::to_vec(&manifest).map_err(|e| invalid(OP, e.to_string()))?;
    let h = header(
        "manifest.json",
        m.len() as u64,
        0o644,
        tar::EntryType::Regular,
    );
    tb.append(&h, &m[..]).map_err(io_err(OP, "write archive"))?;
    if !repositories.is_empty() {
        let r = serde_json::to_vec(&repositories).map_err(|e| invalid(OP, e.to_string()))?;
        let h = header(
            "repositories",
            r.len() as u64,
            0o644,
            tar::EntryType::Regular,
        );
        tb.append(&h, &r[..]).map_err(io_err(OP, "write archive"))?;
    }
    tb.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_err(OP, "write archive"))?;
    Ok(())
}
