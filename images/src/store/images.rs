//! Image records: name resolution (tags, `name@digest`, full and short IDs), tag and
//! untag, remove with Docker's conflict rules, prune, garbage collection and
//! reference counts, and the Engine API views (inspect, history, list). Owns
//! `db.json` semantics; file content is left to the blob and layer modules.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::PathBuf;

use super::{io_err, Db, ImageRecord, Store, StoreError};
use crate::digest::Digest;
use crate::fsutil;
use crate::inspect::{
    self, ContainerConfig, DeleteItem, GraphDriver, HistoryItem, ImageInspect, ImageSummary,
    Metadata, PruneReport, RootFs,
};
use crate::manifest::{ImageConfig, MAX_DOCUMENT_SIZE};
use crate::reference::{self, ImageRef};

/// How a name matched an image.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Match {
    /// A `name:tag` key.
    Tag(String),
    /// A `name@digest` repo digest.
    RepoDigest(String),
    /// An ID or ID prefix.
    Id,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn resolve_in(db: &Db, name: &str) -> Result<(Digest, Match), StoreError> {
    if name.is_empty() {
        return Err(StoreError::NotFound(String::new()));
    }
    if let Some(hex) = name.strip_prefix("sha256:") {
        return resolve_prefix(db, name, hex);
    }
    if let Ok(r) = ImageRef::parse(name) {
        if let Some(d) = r.digest() {
            let key = format!("{}@{d}", r.name());
            if let Some(img) = db.images.values().find(|i| i.repo_digests.contains(&key)) {
                return Ok((img.id.clone(), Match::RepoDigest(key)));
            }
        } else if let Some(id) = db.tags.get(&r.to_string()) {
            return Ok((id.clone(), Match::Tag(r.to_string())));
        }
    }
    if is_hex(name) && name.len() <= 64 {
        return resolve_prefix(db, name, name);
    }
    Err(StoreError::NotFound(name.chars().take(300).collect()))
}

fn resolve_prefix(db: &Db, name: &str, hex: &str) -> Result<(Digest, Match), StoreError> {
    if !is_hex(hex) || hex.len() > 64 {
        return Err(StoreError::NotFound(name.chars().take(300).collect()));
    }
    let mut found = db.images.keys().filter(|d| d.hex().starts_with(hex));
    match (found.next(), found.next()) {
        (Some(d), None) => Ok((d.clone(), Match::Id)),
        (Some(_), Some(_)) => Err(StoreError::Ambiguous(name.to_owned())),
        _ => Err(StoreError::NotFound(name.to_owned())),
    }
}

fn tags_of(db: &Db, id: &Digest) -> Vec<String> {
    db.tags
        .iter()
        .filter(|(_, v)| *v == id)
        .map(|(k, _)| k.clone())
        .collect()
}

fn repo_of(reference: &str) -> String {
    match ImageRef::parse(reference) {
        Ok(r) => r.name(),
        Err(_) => reference.to_owned(),
    }
}

fn now() -> String {
    inspect::format_time(&chrono::Utc::now())
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs: Vec<Digest>,
    /// Layers removed (diff-ids).
    pub layers: Vec<Digest>,
    /// Bytes freed (blob sizes plus layer data sizes).
    pub bytes: u64,
}

impl Store {
    /// Resolves a user-given name (tag, `name@digest`, full or short ID) to an
    /// image ID.
    pub fn resolve(&self, name: &str) -> Result<Digest, StoreError> {
        resolve_in(&self.db(), name).map(|(d, _)| d)
    }

    /// The record of an image ID.
    pub fn get(&self, id: &Digest) -> Result<ImageRecord, StoreError> {
        self.db()
            .images
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    /// All image records.
    pub fn images(&self) -> Vec<ImageRecord> {
        self.db().images.values().cloned().collect()
    }

    /// Normalised tags (`docker.io/library/busybox:latest`) of an image.
    pub fn tags(&self, id: &Digest) -> Vec<String> {
        tags_of(&self.db(), id)
    }

    /// Adds (or merges) an image record and points `tags` at it. The caller must
    /// have put every blob and layer the record references in place (and hold a
    /// lease on them until this returns).
    pub fn add_image(&self, record: ImageRecord, tags: &[ImageRef]) -> Result<(), StoreError> {
        for b in record.blobs() {
            if !self.has_blob(b) {
                return Err(StoreError::BlobMissing(b.clone()));
            }
        }
        for l in &record.layers {
            if !self.has_layer(&l.diff_id) {
                return Err(StoreError::LayerMissing(l.diff_id.clone()));
            }
        }
        for t in tags {
            if t.digest().is_some() {
                return Err(StoreError::Invalid(format!(
                    "tag image {}: refusing to create a tag with a digest reference",
                    record.id
                )));
            }
        }
        self.update(|db| {
            let id = record.id.clone();
            let mut rec = record;
            if let Some(old) = db.images.get(&id) {
                rec.repo_digests.extend(old.repo_digests.iter().cloned());
                rec.added = old.added.clone();
                if rec.last_tag_time.is_none() {
                    rec.last_tag_time = old.last_tag_time.clone();
                }
            }
            if !tags.is_empty() {
                rec.last_tag_time = Some(now());
            }
            db.images.insert(id.clone(), rec);
            for t in tags {
                db.tags.insert(t.to_string(), id.clone());
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Records that `repo_digest` (`name@sha256:...`) refers to image `id`.
    pub fn add_repo_digest(&self, id: &Digest, repo_digest: &ImageRef) -> Result<(), StoreError> {
        if repo_digest.digest().is_none() {
            return Err(StoreError::Invalid(format!("{repo_digest} has no digest")));
        }
        self.update(|db| {
            let img = db
                .images
                .get_mut(id)
                .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            img.repo_digests.insert(repo_digest.to_string());
            Ok(())
        })?;
        Ok(())
    }

    /// `docker tag source target`.
    pub fn tag(&self, source: &str, target: &str) -> Result<Digest, StoreError> {
        let target = ImageRef::parse(target)?;
        if target.digest().is_some() {
            return Err(StoreError::Invalid(format!(
                "tag {target}: refusing to create a tag with a digest reference"
            )));
        }
        let id = self.update(|db| {
            let (id, _) = resolve_in(db, source)?;
            db.tags.insert(target.to_string(), id.clone());
            if let Some(img) = db.images.get_mut(&id) {
                img.last_tag_time = Some(now());
            }
            Ok(id)
        })?;
        Ok(id)
    }

    /// `docker rmi [--force] name`, with Docker's rules:
    /// - by tag or `name@digest`: that reference is removed (and, when the last
    ///   tag of a repository goes, that repository's digest references); the image
    ///   is deleted once no reference is left;
    /// - by ID: refused if the image is tagged in several repositories (unless
    ///   forced); all references are removed and the image deleted;
    /// - an image in `in_use` (IDs used by containers) is never deleted: removing
    ///   its last reference needs `force`, and then only untags it, because its
    ///   layers are shared into running guests.
    pub fn remove(
        &self,
        name: &str,
        force: bool,
        in_use: &HashSet<Digest>,
    ) -> Result<Vec<DeleteItem>, StoreError> {
        let (out, db) = self.update_keep(|db| {
            let (id, how) = resolve_in(db, name)?;
            let used = in_use.contains(&id);
            let mut out = Vec::new();
            let tags = tags_of(db, &id);
            let digests: Vec<String> = db
                .images
                .get(&id)
                .map(|i| i.repo_digests.iter().cloned().collect())
                .unwrap_or_default();
            match how {
                Match::Tag(ref key) | Match::RepoDigest(ref key) => {
                    let remaining = tags.len() + digests.len() - 1;
                    if remaining == 0 && used && !force {
                        return Err(StoreError::Conflict(format!(
                            "unable to remove repository reference {:?} (must force) - image {} is being used by a container",
                            reference::familiar(key),
                            id.short()
                        )));
                    }
                    if let Match::Tag(_) = how {
                        db.tags.remove(key);
                        out.push(DeleteItem::untagged(reference::familiar(key)));
                        // The last tag of a repository takes that repository's
                        // digest references with it.
                        let repo = repo_of(key);
                        let repo_still_tagged = tags.iter().any(|t| t != key && repo_of(t) == repo);
                        if !repo_still_tagged {
                            if let Some(img) = db.images.get_mut(&id) {
                                let gone: Vec<String> = img
                                    .repo_digests
                                    .iter()
                                    .filter(|d| repo_of(d) == repo)
                                    .cloned()
                                    .collect();
                                for d in gone {
                                    img.repo_digests.remove(&d);
                                    out.push(DeleteItem::untagged(reference::familiar(&d)));
                                }
                            }
                        }
                    } else if let Some(img) = db.images.get_mut(&id) {
                        img.repo_digests.remove(key);
                        out.push(DeleteItem::untagged(reference::familiar(key)));
                    }
                }
                Match::Id => {
                    let repos: BTreeSet<String> = tags.iter().map(|t| repo_of(t)).collect();
                    if repos.len() > 1 && !force {
                        return Err(StoreError::Conflict(format!(
                            "unable to delete {} (must be forced) - image is referenced in multiple repositories",
                            id.short()
                        )));
                    }
                    if used && !force {
                        return Err(StoreError::Conflict(format!(
                            "unable to delete {} (must be forced) - image is being used by a container",
                            id.short()
                        )));
                    }
                    for t in &tags {
                        db.tags.remove(t);
                        out.push(DeleteItem::untagged(reference::familiar(t)));
                    }
                    if let Some(img) = db.images.get_mut(&id) {
                        for d in std::mem::take(&mut img.repo_digests) {
                            out.push(DeleteItem::untagged(reference::familiar(&d)));
                        }
                    }
                }
            }
            let referenced = tags_of(db, &id).len()
                + db.images.get(&id).map_or(0, |i| i.repo_digests.len());
            if referenced == 0 && !used {
                db.images.remove(&id);
                out.push(DeleteItem::deleted(id.to_string()));
            }
            Ok(out)
        })?;
        let mut out = out;
        if out.iter().any(|i| i.deleted.is_some()) {
            let report = self.gc_locked(&db)?;
            out.extend(
                report
                    .layers
                    .iter()
                    .map(|l| DeleteItem::deleted(l.to_string())),
            );
        }
        Ok(out)
    }

    /// `docker image prune [-a]`: deletes images not in `in_use` that are dangling
    /// (no tag, no digest reference), or every unused image with `all`, then the
    /// content nothing references any more.
    pub fn prune(&self, all: bool, in_use: &HashSet<Digest>) -> Result<PruneReport, StoreError> {
        let (mut deleted, db) = self.update_keep(|db| {
            let mut out = Vec::new();
            let ids: Vec<Digest> = db.images.keys().cloned().collect();
            for id in ids {
                if in_use.contains(&id) {
                    continue;
                }
                let tags = tags_of(db, &id);
                let digests = db.images.get(&id).map_or(0, |i| i.repo_digests.len());
                if !all && (!tags.is_empty() || digests > 0) {
                    continue;
                }
                for t in &tags {
                    db.tags.remove(t);
                    out.push(DeleteItem::untagged(reference::familiar(t)));
                }
                if let Some(img) = db.images.remove(&id) {
                    for d in &img.repo_digests {
                        out.push(DeleteItem::untagged(reference::familiar(d)));
                    }
                }
                out.push(DeleteItem::deleted(id.to_string()));
            }
            Ok(out)
        })?;
        let report = self.gc_locked(&db)?;
        deleted.extend(
            report
                .layers
                .iter()
                .map(|l| DeleteItem::deleted(l.to_string())),
        );
        Ok(PruneReport {
            images_deleted: deleted,
            space_reclaimed: report.bytes,
        })
    }

    /// Removes blobs and layers no image references and no lease protects
    /// (including leftovers of a crash).
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let db = self.db();
        self.gc_locked(&db)
    }

    fn gc_locked(&self, db: &Db) -> Result<GcReport, StoreError> {
        let leases = super::lock(&self.leases).clone();
        let mut blobs: HashSet<&Digest> = HashSet::new();
        let mut layers: HashSet<&Digest> = HashSet::new();
        for img in db.images.values() {
            blobs.extend(img.blobs());
            layers.extend(img.layers.iter().map(|l| &l.diff_id));
        }
        let mut report = GcReport::default();
        let dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let e = e.map_err(io_err("read", &dir))?;
            let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                continue;
            };
            if blobs.contains(&d) || leases.contains_key(&d) {
                continue;
            }
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(e.path()).map_err(io_err("remove blob", e.path()))?;
            report.bytes += size;
            report.blobs.push(d);
        }
        let dir = self.root.join("layers/sha256");
        for e in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let e = e.map_err(io_err("read", &dir))?;
            let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                continue;
            };
            if layers.contains(&d) || leases.contains_key(&d) {
                continue;
            }
            let size = self.layer_info(&d).map(|i| i.size).unwrap_or(0);
            // Out of layers/ first, so a crash mid-delete leaves no partial layer
            // where a pull would take it for complete.
            let doomed = tempfile::Builder::new()
                .prefix("gc-")
                .tempdir_in(self.tmp_dir())
                .map_err(io_err("create temp in", self.tmp_dir()))?;
            let target = doomed.path().join("layer");
            fs::rename(e.path(), &target).map_err(io_err("move layer out", e.path()))?;
            let meta = self
                .root
                .join("layers/meta")
                .join(format!("{}.json", d.hex()));
            fsutil::remove_path(&meta).map_err(io_err("remove", &meta))?;
            drop(doomed);
            report.bytes += size;
            report.layers.push(d);
        }
        // Metadata whose layer is gone (a crash between writing it and the rename).
        let dir = self.root.join("layers/meta");
        for e in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let e = e.map_err(io_err("read", &dir))?;
            let name = e.file_name();
            let Some(d) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                continue;
            };
            if !self.layer_path(&d).exists() && !leases.contains_key(&d) {
                fsutil::remove_path(&e.path()).map_err(io_err("remove", e.path()))?;
            }
        }
        Ok(report)
    }

    /// How many images use each layer (by diff-id).
    pub fn layer_refcounts(&self) -> BTreeMap<Digest, usize> {
        let db = self.db();
        let mut m = BTreeMap::new();
        for img in db.images.values() {
            // An image listing a layer twice counts once.
            let uniq: BTreeSet<&Digest> = img.layers.iter().map(|l| &l.diff_id).collect();
            for d in uniq {
                *m.entry(d.clone()).or_insert(0) += 1;
            }
        }
        m
    }

    /// How many images use each blob.
    pub fn blob_refcounts(&self) -> BTreeMap<Digest, usize> {
        let db = self.db();
        let mut m = BTreeMap::new();
        for img in db.images.values() {
            let uniq: BTreeSet<&Digest> = img.blobs().collect();
            for d in uniq {
                *m.entry(d.clone()).or_insert(0) += 1;
            }
        }
        m
    }

    /// The layer directories of an image, bottom first: what the guest stacks
    /// as overlayfs lower directories (top first in `lowerdir=`).
    pub fn layer_dirs(&self, name: &str) -> Result<Vec<PathBuf>, StoreError> {
        let id = self.resolve(name)?;
        let img = self.get(&id)?;
        img.layers
            .iter()
            .map(|l| {
                if self.has_layer(&l.diff_id) {
                    Ok(self.layer_path(&l.diff_id))
                } else {
                    Err(StoreError::LayerMissing(l.diff_id.clone()))
                }
            })
            .collect()
    }

    /// The parsed config of an image.
    pub fn config(&self, id: &Digest) -> Result<ImageConfig, StoreError> {
        let data = self.read_blob(id, MAX_DOCUMENT_SIZE)?;
        Ok(ImageConfig::parse(&data)?)
    }

    fn image_size(&self, img: &ImageRecord) -> Result<u64, StoreError> {
        let mut total = 0;
        for l in &img.layers {
            total += self.layer_info(&l.diff_id)?.size;
        }
        Ok(total)
    }

    /// `docker image inspect`.
    pub fn inspect(&self, name: &str) -> Result<ImageInspect, StoreError> {
        let id = self.resolve(name)?;
        let img = self.get(&id)?;
        let cfg = self.config(&id)?;
        let size = i64::try_from(self.image_size(&img)?).unwrap_or(i64::MAX);
        let created = cfg
            .created
            .as_deref()
            .and_then(inspect::parse_time)
            .map(|t| inspect::format_time(&t))
            .unwrap_or_else(|| inspect::ZERO_TIME.to_owned());
        let dirs: Vec<String> = img
            .layers
            .iter()
            .rev()
            .map(|l| self.layer_path(&l.diff_id).display().to_string())
            .collect();
        let mut data = BTreeMap::new();
        data.insert("LowerDirs".to_owned(), dirs.join(":"));
        Ok(ImageInspect {
            id: id.to_string(),
            repo_tags: self
                .tags(&id)
                .iter()
                .map(|t| reference::familiar(t))
                .collect(),
            repo_digests: img
                .repo_digests
                .iter()
                .map(|d| reference::familiar(d))
                .collect(),
            parent: String::new(),
            comment: cfg.comment.clone().unwrap_or_default(),
            created,
            docker_version: cfg.docker_version.clone().unwrap_or_default(),
            author: cfg.author.clone().unwrap_or_default(),
            config: cfg
                .config
                .as_ref()
                .map(ContainerConfig::from)
                .unwrap_or_default(),
            architecture: cfg.architecture.clone(),
            variant: cfg.variant.clone(),
            os: cfg.os.clone(),
            os_version: cfg.os_version.clone(),
            size,
            virtual_size: size,
            graph_driver: GraphDriver {
                name: "moat".into(),
                data,
            },
            root_fs: RootFs {
                kind: "layers".into(),
                layers: img.layers.iter().map(|l| l.diff_id.to_string()).collect(),
            },
            metadata: Metadata {
                last_tag_time: img
                    .last_tag_time
                    .clone()
                    .unwrap_or_else(|| inspect::ZERO_TIME.to_owned()),
            },
        })
    }

    /// `docker history`: newest first; layer sizes on the steps that made layers,
    /// the image ID and tags on the newest step, `<missing>` elsewhere (as Docker
    /// shows pulled images).
    pub fn history(&self, name: &str) -> Result<Vec<HistoryItem>, StoreError> {
        let id = self.resolve(name)?;
        let img = self.get(&id)?;
        let cfg = self.config(&id)?;
        let mut items = Vec::new();
        let mut layer = 0usize;
        for h in &cfg.history {
            let mut size = 0i64;
            if !h.empty_layer {
                let l = img.layers.get(layer).ok_or_else(|| {
                    StoreError::Invalid(format!(
                        "history of {}: too many non-empty layers in the history section",
                        id.short()
                    ))
                })?;
                size = i64::try_from(self.layer_info(&l.diff_id)?.size).unwrap_or(i64::MAX);
                layer += 1;
            }
            items.push(HistoryItem {
                id: "<missing>".into(),
                created: h
                    .created
                    .as_deref()
                    .and_then(inspect::parse_time)
                    .map_or(0, |t| t.timestamp()),
                created_by: h.created_by.clone().unwrap_or_default(),
                tags: None,
                size,
                comment: h.comment.clone().unwrap_or_default(),
            });
        }
        items.reverse();
        if let Some(top) = items.first_mut() {
            top.id = id.to_string();
            let tags: Vec<String> = self
                .tags(&id)
                .iter()
                .map(|t| reference::familiar(t))
                .collect();
            top.tags = if tags.is_empty() { None } else { Some(tags) };
        }
        Ok(items)
    }

    /// `docker images`: one summary per image.
    pub fn summaries(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let mut out = Vec::new();
        for img in self.images() {
            let cfg = self.config(&img.id)?;
            let size = i64::try_from(self.image_size(&img)?).unwrap_or(i64::MAX);
            out.push(ImageSummary {
                id: img.id.to_string(),
                parent_id: String::new(),
                repo_tags: self
                    .tags(&img.id)
                    .iter()
                    .map(|t| reference::familiar(t))
                    .collect(),
                repo_digests: img
                    .repo_digests
                    .iter()
                    .map(|d| reference::familiar(d))
                    .collect(),
                created: cfg
                    .created
                    .as_deref()
                    .and_then(inspect::parse_time)
                    .map_or(0, |t| t.timestamp()),
                size,
                shared_size: -1,
                virtual_size: size,
                labels: cfg.config.and_then(|c| c.labels).unwrap_or_default(),
                containers: -1,
            });
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.created));
        Ok(out)
    }
}
