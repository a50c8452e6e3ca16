//! Docker Engine API shapes for images: `ImageInspect`, `HistoryResponseItem`,
//! `ImageSummary` and `ImageDeleteResponseItem`, with the field names and JSON
//! casing `docker image inspect` and docker-py expect. Owns the wire shapes only;
//! the store fills them.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::manifest::RunConfig;

/// Docker's `ContainerConfig` as shown in `ImageInspect.Config`: every field
/// present, defaults where the image says nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    pub hostname: String,
    pub domainname: String,
    pub user: String,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub env: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    pub image: String,
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    pub working_dir: String,
    pub entrypoint: Option<Vec<String>>,
    pub on_build: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

impl From<&RunConfig> for ContainerConfig {
    fn from(rc: &RunConfig) -> Self {
        let strings = |key: &str| -> Option<Vec<String>> {
            rc.other
                .get(key)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
        };
        Self {
            user: rc.user.clone().unwrap_or_default(),
            exposed_ports: rc.exposed_ports.clone(),
            env: rc.env.clone(),
            cmd: rc.cmd.clone(),
            healthcheck: rc.other.get("Healthcheck").cloned(),
            args_escaped: rc.other.get("ArgsEscaped").and_then(|v| v.as_bool()),
            volumes: rc.volumes.clone(),
            working_dir: rc.working_dir.clone().unwrap_or_default(),
            entrypoint: rc.entrypoint.clone(),
            on_build: strings("OnBuild"),
            labels: rc.labels.clone(),
            stop_signal: rc.stop_signal.clone(),
            shell: strings("Shell"),
            ..Self::default()
        }
    }
}

/// `GraphDriverData`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GraphDriver {
    pub name: String,
    pub data: BTreeMap<String, String>,
}

/// `RootFS`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootFs {
    #[serde(rename = "Type")]
    pub kind: String,
    pub layers: Vec<String>,
}

/// `Metadata`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Metadata {
    pub last_tag_time: String,
}

/// `ImageInspect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub parent: String,
    pub comment: String,
    pub created: String,
    pub docker_version: String,
    pub author: String,
    pub config: ContainerConfig,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub size: i64,
    pub virtual_size: i64,
    pub graph_driver: GraphDriver,
    #[serde(rename = "RootFS")]
    pub root_fs: RootFs,
    pub metadata: Metadata,
}

/// `HistoryResponseItem`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryItem {
    pub id: String,
    pub created: i64,
    pub created_by: String,
    pub tags: Option<Vec<String>>,
    pub size: i64,
    pub comment: String,
}

/// `ImageSummary` (one row of `GET /images/json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    pub id: String,
    pub parent_id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub created: i64,
    pub size: i64,
    pub shared_size: i64,
    pub virtual_size: i64,
    pub labels: BTreeMap<String, String>,
    pub containers: i64,
}

/// `ImageDeleteResponseItem`: exactly one of the two is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untagged: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<String>,
}

impl DeleteItem {
    /// An `Untagged` row.
    pub fn untagged(s: impl Into<String>) -> Self {
        Self {
            untagged: Some(s.into()),
            deleted: None,
        }
    }
    /// A `Deleted` row.
    pub fn deleted(s: impl Into<String>) -> Self {
        Self {
            untagged: None,
            deleted: Some(s.into()),
        }
    }
}

/// Result of `POST /images/prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PruneReport {
    pub images_deleted: Vec<DeleteItem>,
    pub space_reclaimed: u64,
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Formats like Go's `time.RFC3339Nano` (trailing zeros of the fraction dropped),
/// which is what Docker prints.
pub fn format_time(t: &DateTime<Utc>) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    // "2024-01-02T03:04:05.120000000Z" -> "2024-01-02T03:04:05.12Z"
    match s.rsplit_once('.') {
        Some((head, frac)) => {
            let digits = frac.trim_end_matches('Z').trim_end_matches('0');
            if digits.is_empty() {
                format!("{head}Z")
            } else {
                format!("{head}.{digits}Z")
            }
        }
        None => s,
    }
}

/// Go's zero time as Docker prints it.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_times() {
        let t = parse_time("2024-01-02T03:04:05.120000000Z").unwrap();
        assert_eq!(format_time(&t), "2024-01-02T03:04:05.12Z");
        let t = parse_time("2024-01-02T03:04:05+02:00").unwrap();
        assert_eq!(format_time(&t), "2024-01-02T01:04:05Z");
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn inspect_json_uses_docker_field_names() {
        let i = ImageInspect {
            id: "sha256:x".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&i).unwrap();
        for key in [
            "Id",
            "RepoTags",
            "RepoDigests",
            "Created",
            "Size",
            "Config",
            "RootFS",
            "Architecture",
            "Os",
            "GraphDriver",
            "Metadata",
        ] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        let c = &v["Config"];
        for key in [
            "Hostname",
            "Env",
            "Cmd",
            "Entrypoint",
            "WorkingDir",
            "Labels",
            "OnBuild",
        ] {
            assert!(c.get(key).is_some(), "Config.{key} missing");
        }
        let d = serde_json::to_string(&DeleteItem::untagged("busybox:latest")).unwrap();
        assert_eq!(d, r#"{"Untagged":"busybox:latest"}"#);
    }

    #[test]
    fn run_config_maps_to_container_config() {
        let rc: RunConfig = serde_json::from_str(
            r#"{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"/w","OnBuild":["RUN x"],"Shell":["/bin/sh","-c"]}"#,
        )
        .unwrap();
        let cc = ContainerConfig::from(&rc);
        assert_eq!(cc.env.unwrap(), vec!["PATH=/bin"]);
        assert_eq!(cc.working_dir, "/w");
        assert_eq!(cc.on_build.unwrap(), vec!["RUN x"]);
        assert_eq!(cc.shell.unwrap(), vec!["/bin/sh", "-c"]);
    }
}
