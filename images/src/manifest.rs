//! The JSON documents of an image: descriptors, manifests, indexes (OCI and Docker
//! schema 2 share one shape) and the image config. These are moat's own small
//! serde types rather than `oci_spec::image`'s because every digest here must be a
//! sha256 [`Digest`] (it becomes a file name) and every document comes from a
//! hostile source: parsing is lenient about unknown fields but strict about what
//! moat uses. Owns document syntax; it must not fetch or store anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media::{self, ManifestKind};
use crate::platform::Platform;

/// Largest manifest, index or config moat reads into memory.
pub const MAX_DOCUMENT_SIZE: u64 = 8 << 20;

/// Errors reading a document.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON of the expected shape.
    #[error("parse {what}: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The error.
        source: serde_json::Error,
    },
    /// JSON of the right shape with invalid content.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which document.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(what: &'static str, reason: impl Into<String>) -> DocumentError {
    DocumentError::Invalid {
        what,
        reason: reason.into(),
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformDoc>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Foreign URLs. moat never fetches from them (only from the registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    /// A descriptor for `data`.
    pub fn for_bytes(media_type: &str, data: &[u8]) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: Digest::of_bytes(data),
            size: data.len() as u64,
            platform: None,
            annotations: None,
            urls: None,
        }
    }
}

/// A platform as written in an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformDoc {
    /// Architecture.
    pub architecture: String,
    /// OS.
    pub os: String,
    /// Variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// OS version.
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl PlatformDoc {
    /// Normalised platform.
    pub fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

impl From<&Platform> for PlatformDoc {
    fn from(p: &Platform) -> Self {
        Self {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
            os_version: None,
        }
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, if written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index or manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, if written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Entries.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Just enough of a document to tell what it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
}

/// Tells a manifest from an index, by `mediaType` if present (OCI allows it to be
/// missing), else by shape; `header` is the Content-Type the server sent, if any.
pub fn classify(data: &[u8], header: Option<&str>) -> Result<ManifestKind, DocumentError> {
    let probe: Probe = serde_json::from_slice(data).map_err(|source| DocumentError::Json {
        what: "manifest",
        source,
    })?;
    if probe.schema_version == Some(1) {
        return Err(invalid(
            "manifest",
            "Docker schema 1 manifests are not supported (deprecated by Docker)",
        ));
    }
    if probe.schema_version != Some(2) {
        return Err(invalid("manifest", "schemaVersion is not 2"));
    }
    let declared = probe.media_type.as_deref().or(header);
    if let Some(mt) = declared {
        if let Some(kind) = media::manifest_kind(mt) {
            return Ok(kind);
        }
        if probe.media_type.is_some() {
            return Err(invalid(
                "manifest",
                format!("unsupported media type {mt:?}"),
            ));
        }
    }
    match (probe.manifests.is_some(), probe.layers.is_some()) {
        (true, false) => Ok(ManifestKind::Index),
        (false, true) => Ok(ManifestKind::Manifest),
        _ => Err(invalid(
            "manifest",
            "neither an image manifest nor an index",
        )),
    }
}

impl Manifest {
    /// Parses and checks a manifest: an image config and filesystem layers only.
    pub fn parse(data: &[u8]) -> Result<Self, DocumentError> {
        let m: Manifest = serde_json::from_slice(data).map_err(|source| DocumentError::Json {
            what: "manifest",
            source,
        })?;
        if m.schema_version != 2 {
            return Err(invalid("manifest", "schemaVersion is not 2"));
        }
        if let Some(mt) = &m.media_type {
            if media::manifest_kind(mt) != Some(ManifestKind::Manifest) {
                return Err(invalid(
                    "manifest",
                    format!("media type {mt:?} is not an image manifest"),
                ));
            }
        }
        if !media::is_image_config(&m.config.media_type) {
            return Err(invalid(
                "manifest",
                format!(
                    "config media type {:?} is not a container image (an OCI artifact?)",
                    m.config.media_type
                ),
            ));
        }
        if m.config.size > MAX_DOCUMENT_SIZE {
            return Err(invalid("manifest", "config larger than 8 MiB"));
        }
        if m.layers.len() > 1000 {
            return Err(invalid("manifest", "more than 1000 layers"));
        }
        for l in &m.layers {
            if media::layer_compression(&l.media_type).is_none() {
                return Err(invalid(
                    "manifest",
                    format!(
                        "layer media type {:?} is not a filesystem layer",
                        l.media_type
                    ),
                ));
            }
        }
        Ok(m)
    }

    /// The media type to send with this manifest (OCI if unspecified).
    pub fn media_type_or_default(&self) -> &str {
        self.media_type.as_deref().unwrap_or(media::OCI_MANIFEST)
    }
}

impl Index {
    /// Parses an index or manifest list.
    pub fn parse(data: &[u8]) -> Result<Self, DocumentError> {
        let i: Index = serde_json::from_slice(data).map_err(|source| DocumentError::Json {
            what: "index",
            source,
        })?;
        if i.schema_version != 2 {
            return Err(invalid("index", "schemaVersion is not 2"));
        }
        if i.manifests.len() > 10_000 {
            return Err(invalid("index", "more than 10000 entries"));
        }
        Ok(i)
    }

    /// The entry for `want`, if any.
    pub fn select(&self, want: &Platform) -> Option<&Descriptor> {
        let cands: Vec<crate::platform::Candidate<'_>> = self
            .manifests
            .iter()
            .map(|d| crate::platform::Candidate {
                platform: d.platform.as_ref().map(PlatformDoc::platform),
                media_type: &d.media_type,
            })
            .collect();
        crate::platform::select(want, &cands).and_then(|i| self.manifests.get(i))
    }

    /// Platforms offered, for an error message.
    pub fn platforms(&self) -> Vec<String> {
        self.manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| p.platform().to_string()))
            .collect()
    }
}

/// The runtime part of an image config (Docker's `ContainerConfig` fields that
/// images carry). Unknown fields are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Exposed ports, `"80/tcp": {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Volumes, `"/data": {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Everything else (Healthcheck, OnBuild, Shell, ArgsEscaped, ...).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// rootfs section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Diff-ids, bottom first.
    pub diff_ids: Vec<Digest>,
}

/// One history entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryDoc {
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True if the step made no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// An image config (OCI image config, which Docker's is a superset of). Only read;
/// stored configs are kept byte for byte because their digest is the image ID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Architecture.
    pub architecture: String,
    /// OS.
    pub os: String,
    /// Variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// OS version.
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Runtime defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunConfig>,
    /// Layers.
    pub rootfs: RootFs,
    /// History.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryDoc>,
    /// Docker: the build's engine version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    /// Docker: commit message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl ImageConfig {
    /// Parses and checks a config.
    pub fn parse(data: &[u8]) -> Result<Self, DocumentError> {
        let c: ImageConfig =
            serde_json::from_slice(data).map_err(|source| DocumentError::Json {
                what: "image config",
                source,
            })?;
        if c.rootfs.kind != "layers" {
            return Err(invalid(
                "image config",
                format!("rootfs type {:?} is not \"layers\"", c.rootfs.kind),
            ));
        }
        if c.rootfs.diff_ids.len() > 1000 {
            return Err(invalid("image config", "more than 1000 layers"));
        }
        Ok(c)
    }

    /// The image's platform.
    pub fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of_bytes(s.as_bytes())
    }

    #[test]
    fn classifies_documents() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{}","size":1}},"layers":[]}}"#,
            media::OCI_CONFIG,
            d("c")
        );
        assert_eq!(
            classify(m.as_bytes(), None).unwrap(),
            ManifestKind::Manifest
        );
        let i = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(classify(i.as_bytes(), None).unwrap(), ManifestKind::Index);
        let l = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
            media::DOCKER_MANIFEST_LIST
        );
        assert_eq!(classify(l.as_bytes(), None).unwrap(), ManifestKind::Index);
        assert!(classify(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).is_err());
        assert!(classify(br#"{"schemaVersion":2}"#, None).is_err());
        assert!(classify(
            br#"{"schemaVersion":2,"mediaType":"text/plain","layers":[]}"#,
            None
        )
        .is_err());
        assert!(classify(b"not json", None).is_err());
    }

    #[test]
    fn manifest_checks_config_and_layer_types() {
        let mk = |config_mt: &str, layer_mt: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{config_mt}","digest":"{}","size":10}},"layers":[{{"mediaType":"{layer_mt}","digest":"{}","size":5}}]}}"#,
                media::DOCKER_MANIFEST,
                d("c"),
                d("l")
            )
        };
        let m =
            Manifest::parse(mk(media::DOCKER_CONFIG, media::DOCKER_LAYER_GZIP).as_bytes()).unwrap();
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.media_type_or_default(), media::DOCKER_MANIFEST);
        assert!(Manifest::parse(
            mk(
                "application/vnd.cncf.helm.config.v1+json",
                media::OCI_LAYER_GZIP
            )
            .as_bytes()
        )
        .is_err());
        assert!(
            Manifest::parse(mk(media::OCI_CONFIG, "application/octet-stream").as_bytes()).is_err()
        );
        // Non-sha256 digests are refused at parse time.
        let bad = mk(media::OCI_CONFIG, media::OCI_LAYER_GZIP).replace("sha256:", "sha512:");
        assert!(Manifest::parse(bad.as_bytes()).is_err());
    }

    #[test]
    fn index_selects_platform() {
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"{m}","digest":"{a}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
              {{"mediaType":"{m}","digest":"{b}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{m}","digest":"{c}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#,
            m = media::OCI_MANIFEST,
            a = d("a"),
            b = d("b"),
            c = d("c")
        );
        let idx = Index::parse(i.as_bytes()).unwrap();
        assert_eq!(
            idx.select(&Platform::parse("linux/amd64").unwrap())
                .unwrap()
                .digest,
            d("b")
        );
        assert_eq!(
            idx.select(&Platform::parse("linux/arm64").unwrap())
                .unwrap()
                .digest,
            d("a")
        );
        assert!(idx
            .select(&Platform::parse("linux/riscv64").unwrap())
            .is_none());
        assert_eq!(
            idx.platforms(),
            vec!["linux/arm64", "linux/amd64", "unknown/unknown"]
        );
    }

    #[test]
    fn config_keeps_unknown_run_fields() {
        let c = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["A=1"],"Cmd":["sh"],"Healthcheck":{{"Test":["NONE"]}}}},"rootfs":{{"type":"layers","diff_ids":["{}"]}},"history":[{{"created_by":"x","empty_layer":true}}],"container_config":{{}}}}"#,
            d("l")
        );
        let cfg = ImageConfig::parse(c.as_bytes()).unwrap();
        let rc = cfg.config.unwrap();
        assert_eq!(rc.env.unwrap(), vec!["A=1"]);
        assert!(rc.other.contains_key("Healthcheck"));
        assert!(cfg.history[0].empty_layer);
        assert!(ImageConfig::parse(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"x","diff_ids":[]}}"#
        )
        .is_err());
    }
}
