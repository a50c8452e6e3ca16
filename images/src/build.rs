//! Assembles a new image in the store from layer streams and a run config:
//! writes the config (whose digest is the image ID) and an OCI manifest, and
//! records the image. Used by `import`, `load` of Docker archives (which carry no
//! manifest), and by callers that create images (commit). Owns the shape of
//! generated configs and manifests; it must not fetch anything.

use std::io::Read;

use chrono::{DateTime, Utc};

use crate::digest::Digest;
use crate::inspect;
use crate::manifest::{Descriptor, HistoryDoc, ImageConfig, Manifest, RootFs, RunConfig};
use crate::media;
use crate::platform::Platform;
use crate::reference::ImageRef;
use crate::store::{ImageRecord, LayerRef, Lease, Store, StoreError};

/// Builds one image.
#[derive(Debug)]
pub struct ImageBuilder {
    platform: Platform,
    run: RunConfig,
    history: Vec<HistoryDoc>,
    layers: Vec<LayerRef>,
    created: DateTime<Utc>,
    author: Option<String>,
    comment: Option<String>,
    lease: Lease,
}

impl ImageBuilder {
    /// An empty image for the host platform, created now.
    pub fn new(store: &Store) -> Self {
        Self {
            platform: Platform::host(),
            run: RunConfig::default(),
            history: Vec::new(),
            layers: Vec::new(),
            created: Utc::now(),
            author: None,
            comment: None,
            lease: store.lease(),
        }
    }

    /// Sets the platform.
    pub fn platform(mut self, p: Platform) -> Self {
        self.platform = p;
        self
    }

    /// Sets the run config (Env, Cmd, ...).
    pub fn run_config(mut self, rc: RunConfig) -> Self {
        self.run = rc;
        self
    }

    /// Sets the creation time.
    pub fn created(mut self, t: DateTime<Utc>) -> Self {
        self.created = t;
        self
    }

    /// Sets the author.
    pub fn author(mut self, a: &str) -> Self {
        self.author = Some(a.to_owned());
        self
    }

    /// Sets the commit message (config `comment`).
    pub fn comment(mut self, c: &str) -> Self {
        self.comment = Some(c.to_owned());
        self
    }

    /// Adds a layer from a tar stream (gzip, zstd or plain, detected), stored as
    /// received, with a history entry.
    pub fn add_layer<R: Read>(
        &mut self,
        store: &Store,
        r: R,
        created_by: &str,
        comment: Option<&str>,
    ) -> Result<&LayerRef, StoreError> {
        let l = store.ingest_layer(r, None, None, None, &mut self.lease)?;
        self.layers.push(LayerRef {
            diff_id: l.info.diff_id.clone(),
            blob: l.blob.clone(),
            media_type: media::oci_layer_type(l.compression).to_owned(),
            blob_size: l.blob_size,
        });
        self.history.push(HistoryDoc {
            created: Some(inspect::format_time(&self.created)),
            created_by: Some(created_by.to_owned()),
            comment: comment.map(str::to_owned),
            ..HistoryDoc::default()
        });
        self.layers
            .last()
            .ok_or_else(|| StoreError::Invalid("no layer".into()))
    }

    /// Adds a history step that made no layer (ENV, CMD, ...).
    pub fn add_empty_step(&mut self, created_by: &str) {
        self.history.push(HistoryDoc {
            created: Some(inspect::format_time(&self.created)),
            created_by: Some(created_by.to_owned()),
            empty_layer: true,
            ..HistoryDoc::default()
        });
    }

    /// Writes config and manifest and records the image under `tags`. Returns the
    /// image ID.
    pub fn commit(mut self, store: &Store, tags: &[ImageRef]) -> Result<Digest, StoreError> {
        let config = ImageConfig {
            created: Some(inspect::format_time(&self.created)),
            author: self.author.clone(),
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: self.platform.variant.clone(),
            os_version: None,
            config: Some(self.run.clone()),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: self.layers.iter().map(|l| l.diff_id.clone()).collect(),
            },
            history: self.history.clone(),
            docker_version: None,
            comment: self.comment.clone(),
        };
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| StoreError::Invalid(e.to_string()))?;
        commit_with_config(
            store,
            &config_bytes,
            media::OCI_CONFIG,
            &self.layers,
            tags,
            &mut self.lease,
        )
    }
}

/// Records an image from a ready config (kept byte for byte: its digest is the
/// image ID) and stored layers: writes an OCI manifest for them.
pub fn commit_with_config(
    store: &Store,
    config_bytes: &[u8],
    config_media_type: &str,
    layers: &[LayerRef],
    tags: &[ImageRef],
    lease: &mut Lease,
) -> Result<Digest, StoreError> {
    let config = ImageConfig::parse(config_bytes)?;
    let diff_ids: Vec<&Digest> = layers.iter().map(|l| &l.diff_id).collect();
    if config.rootfs.diff_ids.iter().collect::<Vec<_>>() != diff_ids {
        return Err(StoreError::Invalid(
            "image config rootfs.diff_ids do not match the layers".into(),
        ));
    }
    let id = store.put_blob(config_bytes, lease)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        config: Descriptor::for_bytes(config_media_type, config_bytes),
        layers: layers
            .iter()
            .map(|l| Descriptor {
                media_type: l.media_type.clone(),
                digest: l.blob.clone(),
                size: l.blob_size,
                platform: None,
                annotations: None,
                urls: None,
            })
            .collect(),
        annotations: None,
    };
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let manifest_digest = store.put_blob(&manifest_bytes, lease)?;
    let record = ImageRecord {
        id: id.clone(),
        config_media_type: config_media_type.to_owned(),
        manifest: manifest_digest,
        manifest_media_type: media::OCI_MANIFEST.into(),
        index: None,
        layers: layers.to_vec(),
        repo_digests: Default::default(),
        platform: config.platform(),
        added: inspect::format_time(&Utc::now()),
        last_tag_time: None,
    };
    store.add_image(record, tags)?;
    Ok(id)
}
