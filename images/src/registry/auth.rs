//! Registry credentials: given explicitly (the Engine API's `X-Registry-Auth`) or
//! read from a Docker client config (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`, `auths.<registry>.auth` = base64 `user:pass`).
//! Credential helpers (`credsStore`, `credHelpers`) and identity tokens are not
//! supported yet. Owns credential lookup; it must not send requests.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::reference::DOCKER_HUB;

/// A username and password (or token used as password).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User.
    pub username: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Errors reading a Docker client config.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file exists but cannot be read.
    #[error("read docker config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("parse docker config {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The directory Docker's CLI reads: `$DOCKER_CONFIG`, else `$HOME/.docker`.
pub fn default_config_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker"))
}

/// Normalises an `auths` key (`https://index.docker.io/v1/`, `http://h:5000`,
/// `h:5000/v2/`) to a registry host as references spell it.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        _ => host,
    }
}

/// Looks up credentials for `registry` (as in a reference: `docker.io`,
/// `h:5000`) in `dir/config.json`. A missing file means anonymous.
pub fn lookup(dir: &Path, registry: &str) -> Result<Option<Credentials>, AuthError> {
    let path = dir.join("config.json");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(AuthError::Read { path, source }),
    };
    if data.len() > 4 << 20 {
        return Err(AuthError::Parse {
            path,
            reason: "larger than 4 MiB".into(),
        });
    }
    let cfg: DockerConfig = serde_json::from_slice(&data).map_err(|e| AuthError::Parse {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let want = normalize_key(registry);
    for (key, entry) in &cfg.auths {
        if normalize_key(key) != want {
            continue;
        }
        if entry
            .identitytoken
            .as_deref()
            .is_some_and(|t| !t.is_empty())
        {
            tracing::warn!(
                registry,
                "identity tokens in docker config are not supported yet"
            );
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| AuthError::Parse {
                    path: path.clone(),
                    reason: format!("auths.{key}.auth: {e}"),
                })?;
            let s = String::from_utf8(raw).map_err(|_| AuthError::Parse {
                path: path.clone(),
                reason: format!("auths.{key}.auth: not UTF-8"),
            })?;
            let (user, pass) = s.split_once(':').ok_or_else(|| AuthError::Parse {
                path: path.clone(),
                reason: format!("auths.{key}.auth: not user:password"),
            })?;
            return Ok(Some(Credentials {
                username: user.to_owned(),
                password: pass.to_owned(),
            }));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }));
        }
    }
    if cfg.cred_helpers.keys().any(|k| normalize_key(k) == want) || cfg.creds_store.is_some() {
        tracing::warn!(
            registry,
            "docker credential helpers are not supported yet; pulling anonymously"
        );
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), json).unwrap();
        d
    }

    #[test]
    fn reads_base64_auth_for_matching_registry() {
        let b = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        let d = config(&format!(
            r#"{{"auths":{{"http://127.0.0.1:5000/v2/":{{"auth":"{b}"}},"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
            base64::engine::general_purpose::STANDARD.encode("hub:pw")
        ));
        let c = lookup(d.path(), "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3:cret")
        );
        let h = lookup(d.path(), "docker.io").unwrap().unwrap();
        assert_eq!(h.username, "hub");
        assert!(lookup(d.path(), "quay.io").unwrap().is_none());
        assert!(!format!("{c:?}").contains("s3:cret"));
    }

    #[test]
    fn missing_file_is_anonymous_and_bad_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(lookup(d.path(), "x").unwrap().is_none());
        let d = config("{not json");
        assert!(matches!(
            lookup(d.path(), "x"),
            Err(AuthError::Parse { .. })
        ));
        let d = config(r#"{"auths":{"x":{"auth":"!!!"}}}"#);
        assert!(matches!(
            lookup(d.path(), "x"),
            Err(AuthError::Parse { .. })
        ));
        let d = config(r#"{"auths":{"x":{"auth":"bm9jb2xvbg=="}}}"#);
        assert!(matches!(
            lookup(d.path(), "x"),
            Err(AuthError::Parse { .. })
        ));
    }

    #[test]
    fn credential_helpers_fall_back_to_anonymous() {
        let d = config(r#"{"credsStore":"desktop","auths":{"x":{}}}"#);
        assert!(lookup(d.path(), "x").unwrap().is_none());
    }
}
