//! Registry client (OCI distribution spec) on top of `oci-client`: pull into the
//! store and push from it. Adds what moat needs around the crate:
//! - credentials from Docker's config or the caller, anonymous, basic and bearer
//!   token auth (the token dance is `oci-client`'s);
//! - `insecure_registries` (host[:port] or CIDR; HTTPS without verification, then
//!   plain HTTP, as Docker does; loopback registries count as insecure by default)
//!   and `registry_mirrors` (for Docker Hub, tried in order before Docker Hub);
//! - parallel layer downloads (a global limit), each streamed straight into the
//!   store: the bytes are written to the blob, hashed and unpacked as they arrive;
//! - retries with exponential back-off on transient errors, resuming interrupted
//!   blob downloads with HTTP `Range` (oci-client's `pull_blob_stream_partial`);
//! - per-layer progress events.
//!
//! Where `oci-client` 0.18 falls short (see the report): its full-blob stream
//! re-hashes every byte (moat already hashes while storing), so blobs are always
//! fetched through the ranged call; `pull_manifest_raw` reads a manifest body
//! without a size cap; it has no retries; and its auth store keeps the first
//! credentials per registry, so moat makes a fresh client per operation.
//!
//! Owns network transfers; it must not write to the store except through the
//! store's API.

pub mod auth;
pub mod progress;

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol, LayerDescriptor};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use tokio::sync::{mpsc, Semaphore};

use crate::digest::Digest;
use crate::manifest::{self, Descriptor, ImageConfig, Index, Manifest, MAX_DOCUMENT_SIZE};
use crate::media::{self, ManifestKind};
use crate::platform::Platform;
use crate::reference::{ImageRef, ReferenceError, DOCKER_HUB};
use crate::store::{blob_key, layer_key, ImageRecord, LayerRef, Lease, Store, StoreError};

pub use auth::Credentials;
pub use progress::{IndicatifRenderer, Phase, Progress, ProgressEvent};

use progress::Meter;

/// Registry settings (the daemon's `insecure-registries` and `registry-mirrors`).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries reached without TLS verification or over plain HTTP:
    /// `host[:port]` or a CIDR such as `10.0.0.0/8`.
    pub insecure_registries: Vec<String>,
    /// Treat loopback registries (`localhost`, `127.0.0.0/8`, `::1`) as insecure,
    /// as Docker does.
    pub insecure_loopback: bool,
    /// Docker Hub mirrors, e.g. `https://mirror.gcr.io` or `http://10.0.0.5:5000`.
    pub registry_mirrors: Vec<String>,
    /// Where `config.json` lives; `None` = `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Layers downloaded at once (all pulls together).
    pub max_concurrent_downloads: usize,
    /// Blobs uploaded at once (all pushes together).
    pub max_concurrent_uploads: usize,
    /// Attempts per request before giving up on transient errors.
    pub max_attempts: u32,
    /// First back-off; doubles per attempt up to 10 s.
    pub initial_backoff: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Timeout for one read (a stalled transfer).
    pub read_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            insecure_loopback: true,
            registry_mirrors: Vec::new(),
            docker_config_dir: None,
            max_concurrent_downloads: 3,
            max_concurrent_uploads: 5,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// Registry errors. Each names the operation and the reference.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused our credentials (or we had none).
    #[error("{op} {reference}: unauthorized: {detail}")]
    Unauthorized {
        /// pull or push.
        op: &'static str,
        /// The image.
        reference: String,
        /// The registry's words.
        detail: String,
    },
    /// Manifest, repository or blob unknown.
    #[error("{op} {reference}: not found: {detail}")]
    NotFound {
        /// pull or push.
        op: &'static str,
        /// The image.
        reference: String,
        /// The registry's words.
        detail: String,
    },
    /// Any other error talking to the registry.
    #[error("{op} {reference}: {source}")]
    Remote {
        /// pull or push.
        op: &'static str,
        /// The image.
        reference: String,
        /// The error.
        source: OciDistributionError,
    },
    /// The registry sent content that is wrong or refused by policy.
    #[error("{op} {reference}: {reason}")]
    Invalid {
        /// pull or push.
        op: &'static str,
        /// The image.
        reference: String,
        /// Why.
        reason: String,
    },
    /// No manifest for the wanted platform.
    #[error("pull {reference}: no matching manifest for {wanted} in the manifest list (available: {available})")]
    Platform {
        /// The image.
        reference: String,
        /// Wanted.
        wanted: String,
        /// Offered.
        available: String,
    },
    /// Reading credentials failed.
    #[error(transparent)]
    Credentials(#[from] auth::AuthError),
    /// A bad reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pull settings for one pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Platform to select from an index; `None` = the host's.
    pub platform: Option<Platform>,
    /// Credentials; `None` = from the Docker config, else anonymous.
    pub auth: Option<Credentials>,
    /// Progress sink.
    pub progress: Progress,
}

/// What a pull produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Image ID.
    pub id: Digest,
    /// The normalised reference pulled.
    pub reference: ImageRef,
    /// Digest of what the reference points to (index or manifest).
    pub digest: Digest,
    /// The platform manifest's digest.
    pub manifest: Digest,
}

/// Push settings.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Where to push; `None` = the name given.
    pub target: Option<String>,
    /// Credentials; `None` = from the Docker config.
    pub auth: Option<Credentials>,
    /// Progress sink.
    pub progress: Progress,
}

/// What a push produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Where it went.
    pub reference: ImageRef,
    /// Manifest digest.
    pub digest: Digest,
    /// Manifest size.
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scheme {
    Https,
    HttpsNoVerify,
    Http,
}

/// One way to reach an image: a registry (or mirror) with a scheme.
struct Endpoint {
    oci_ref: oci_client::Reference,
    client: oci_client::Client,
    auth: RegistryAuth,
    host: String,
    scheme: Scheme,
    mirror: bool,
}

/// The registry client. Share one per daemon (it holds the transfer limits).
#[derive(Debug)]
pub struct Registry {
    cfg: RegistryConfig,
    schemes: Mutex<HashMap<String, Scheme>>,
    downloads: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn host_ip(host: &str) -> Option<IpAddr> {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map(|(h, _)| h);
    let h = match h {
        Some(h) => h,
        None => host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') {
                h
            } else {
                host
            }
        }),
    };
    h.parse().ok()
}

fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => {
            r.is_timeout() || r.is_connect() || r.is_request() || r.is_body() || r.is_decode()
        }
        OciDistributionError::ServerError { code, .. } => {
            *code >= 500 || *code == 429 || *code == 408
        }
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// An error that means "this scheme does not work here" (TLS to a plain HTTP
/// server, connection refused), worth trying the next scheme for.
fn is_transport(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::RequestError(r) if r.is_connect() || r.is_request())
}

fn map_err(op: &'static str, reference: &str, e: OciDistributionError) -> RegistryError {
    let reference = reference.to_owned();
    match &e {
        OciDistributionError::UnauthorizedError { url } => RegistryError::Unauthorized {
            op,
            reference,
            detail: format!("authentication required ({url})"),
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let detail = envelope.to_string();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                RegistryError::NotFound {
                    op,
                    reference,
                    detail,
                }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                RegistryError::Unauthorized {
                    op,
                    reference,
                    detail,
                }
            } else {
                RegistryError::Remote {
                    op,
                    reference,
                    source: e,
                }
            }
        }
        OciDistributionError::ServerError {
            code: 404, message, ..
        } => RegistryError::NotFound {
            op,
            reference,
            detail: message.chars().take(300).collect(),
        },
        OciDistributionError::ServerError {
            code: 401 | 403,
            message,
            ..
        } => RegistryError::Unauthorized {
            op,
            reference,
            detail: message.chars().take(300).collect(),
        },
        OciDistributionError::RequestError(r)
            if matches!(r.status().map(|s| s.as_u16()), Some(401 | 403)) =>
        {
            RegistryError::Unauthorized {
                op,
                reference,
                detail: r.to_string(),
            }
        }
        OciDistributionError::RequestError(r) if r.status().map(|s| s.as_u16()) == Some(404) => {
            RegistryError::NotFound {
                op,
                reference,
                detail: r.to_string(),
            }
        }
        OciDistributionError::AuthenticationFailure(m) => RegistryError::Unauthorized {
            op,
            reference,
            detail: m.chars().take(300).collect(),
        },
        _ => RegistryError::Remote {
            op,
            reference,
            source: e,
        },
    }
}

/// Reads the bytes a download task sends, for a blocking consumer.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Invalid(format!("store worker failed: {e}"))
}

impl Registry {
    /// A client with `cfg`.
    pub fn new(cfg: RegistryConfig) -> Self {
        let downloads = Arc::new(Semaphore::new(cfg.max_concurrent_downloads.max(1)));
        let uploads = Arc::new(Semaphore::new(cfg.max_concurrent_uploads.max(1)));
        Self {
            cfg,
            schemes: Mutex::new(HashMap::new()),
            downloads,
            uploads,
        }
    }

    /// Settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// True if `host` (a registry as written in references) may be reached
    /// without TLS verification or over plain HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        let host_l = host.to_ascii_lowercase();
        let ip = host_ip(&host_l);
        if self.cfg.insecure_loopback {
            let name = host_l.split(':').next().unwrap_or("");
            if name == "localhost" || ip.is_some_and(|i| i.is_loopback()) {
                return true;
            }
        }
        self.cfg.insecure_registries.iter().any(|entry| {
            let e = entry
                .trim()
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_ascii_lowercase();
            if e == host_l {
                return true;
            }
            match ip {
                Some(ip) => cidr_contains(&e, ip),
                None => false,
            }
        })
    }

    fn schemes_for(&self, host: &str, forced: Option<Scheme>) -> Vec<Scheme> {
        if let Some(s) = forced {
            return vec![s];
        }
        if let Some(s) = lock(&self.schemes).get(host) {
            return vec![*s];
        }
        if self.is_insecure(host) {
            vec![Scheme::HttpsNoVerify, Scheme::Http]
        } else {
            vec![Scheme::Https]
        }
    }

    fn client(&self, scheme: Scheme) -> Result<oci_client::Client, OciDistributionError> {
        let cfg = ClientConfig {
            protocol: match scheme {
                Scheme::Http => ClientProtocol::Http,
                _ => ClientProtocol::Https,
            },
            accept_invalid_certificates: scheme == Scheme::HttpsNoVerify,
            use_monolithic_push: true,
            platform_resolver: None,
            connect_timeout: Some(self.cfg.connect_timeout),
            read_timeout: Some(self.cfg.read_timeout),
            user_agent: concat!("moat/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        oci_client::Client::try_from(cfg)
    }

    fn credentials(
        &self,
        host: &str,
        explicit: Option<&Credentials>,
    ) -> Result<RegistryAuth, RegistryError> {
        if let Some(c) = explicit {
            return Ok(RegistryAuth::Basic(c.username.clone(), c.password.clone()));
        }
        let dir = match &self.cfg.docker_config_dir {
            Some(d) => Some(d.clone()),
            None => auth::default_config_dir(),
        };
        Ok(match dir {
            Some(d) => match auth::lookup(&d, host)? {
                Some(c) => RegistryAuth::Basic(c.username, c.password),
                None => RegistryAuth::Anonymous,
            },
            None => RegistryAuth::Anonymous,
        })
    }

    /// Endpoints to try for `r`, in order: mirrors (Docker Hub only, pulls only),
    /// then the registry, each with every candidate scheme.
    fn endpoints(
        &self,
        op: &'static str,
        r: &ImageRef,
        explicit: Option<&Credentials>,
        mirrors: bool,
    ) -> Result<Vec<Endpoint>, RegistryError> {
        let rs = r.to_string();
        let mut out = Vec::new();
        let mut add = |oci_ref: oci_client::Reference,
                       host: &str,
                       auth: RegistryAuth,
                       forced: Option<Scheme>,
                       mirror: bool|
         -> Result<(), RegistryError> {
            for scheme in self.schemes_for(host, forced) {
                out.push(Endpoint {
                    oci_ref: oci_ref.clone(),
                    client: self.client(scheme).map_err(|e| map_err(op, &rs, e))?,
                    auth: auth.clone(),
                    host: host.to_owned(),
                    scheme,
                    mirror,
                });
            }
            Ok(())
        };
        let hub = r.registry() == DOCKER_HUB;
        if mirrors && hub {
            for m in &self.cfg.registry_mirrors {
                let m = m.trim().trim_end_matches('/');
                let (forced, host) = match (m.strip_prefix("http://"), m.strip_prefix("https://")) {
                    (Some(h), _) => (Some(Scheme::Http), h),
                    (None, Some(h)) => (None, h),
                    (None, None) => (None, m),
                };
                let host = host.split('/').next().unwrap_or(host);
                if host.is_empty() {
                    continue;
                }
                let mut oci_ref = r.as_oci().clone();
                oci_ref.set_mirror_registry(host.to_owned());
                // A mirror gets credentials only from the Docker config, never the
                // ones the caller meant for Docker Hub.
                let auth = self.credentials(host, None)?;
                add(oci_ref, host, auth, forced, true)?;
            }
        }
        // Docker Hub is reached at index.docker.io; credentials are looked up
        // under the name references use.
        let upstream = if hub { "index.docker.io" } else { r.registry() };
        let auth = self.credentials(r.registry(), explicit)?;
        add(r.as_oci().clone(), upstream, auth, None, false)?;
        Ok(out)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(6);
        (self.cfg.initial_backoff * factor).min(Duration::from_secs(10))
    }

    /// Runs `f` with retries on transient errors.
    async fn retry<T, F, Fut>(&self, f: F) -> Result<T, OciDistributionError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        self.retry_unless(false, f).await
    }

    /// [`Registry::retry`]; with `fallback`, connection-level errors are not
    /// retried because another scheme is waiting to be tried.
    async fn retry_unless<T, F, Fut>(
        &self,
        fallback: bool,
        mut f: F,
    ) -> Result<T, OciDistributionError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if fallback && is_transport(&e) => return Err(e),
                Err(e) if is_transient(&e) && attempt + 1 < self.cfg.max_attempts => {
                    tracing::debug!(error = %e, attempt, "transient registry error; retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Pulls `reference` into `store`: resolves the platform from an index,
    /// fetches config and layers (layers in parallel, each unpacked while it
    /// downloads), records the image and tags it (unless pulled by digest).
    pub async fn pull(
        &self,
        store: &Arc<Store>,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<Pulled, RegistryError> {
        let r = ImageRef::parse(reference)?;
        let endpoints = self.endpoints("pull", &r, opts.auth.as_ref(), true)?;
        let mut last_err = None;
        let mut skip_host: Option<String> = None;
        for (i, ep) in endpoints.iter().enumerate() {
            if skip_host.as_deref() == Some(ep.host.as_str()) {
                continue;
            }
            let fallback = endpoints[i + 1..].iter().any(|e| e.host == ep.host);
            match self.pull_from(store, &r, ep, opts, fallback).await {
                Ok(p) => return Ok(p),
                Err((e, fetched_anything)) => {
                    let next_scheme_worthy = !fetched_anything
                        && matches!(&e, RegistryError::Remote { source, .. } if is_transport(source));
                    if ep.mirror {
                        tracing::warn!(mirror = %ep.host, error = %e, "mirror failed; trying the next endpoint");
                        if !next_scheme_worthy {
                            skip_host = Some(ep.host.clone());
                        }
                        last_err = Some(e);
                        continue;
                    }
                    if next_scheme_worthy {
                        tracing::debug!(host = %ep.host, scheme = ?ep.scheme, error = %e, "scheme failed; trying the next");
                        last_err = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| RegistryError::Invalid {
            op: "pull",
            reference: r.to_string(),
            reason: "no endpoint to pull from".into(),
        }))
    }

    /// One endpoint's attempt. The flag says whether the endpoint answered at all
    /// (then a failure is not a reason to try another scheme).
    async fn pull_from(
        &self,
        store: &Arc<Store>,
        r: &ImageRef,
        ep: &Endpoint,
        opts: &PullOptions,
        fallback: bool,
    ) -> Result<Pulled, (RegistryError, bool)> {
        let rs = r.to_string();
        let e0 = |e| (e, false);
        let e1 = |e| (e, true);
        let (top, top_digest) = self
            .fetch_manifest(ep, &ep.oci_ref, &rs, fallback)
            .await
            .map_err(e0)?;
        lock(&self.schemes).insert(ep.host.clone(), ep.scheme);
        let want = opts.platform.clone().unwrap_or_else(Platform::host);
        let invalid = |reason: String| {
            (
                RegistryError::Invalid {
                    op: "pull",
                    reference: rs.clone(),
                    reason,
                },
                true,
            )
        };
        let kind = manifest::classify(&top, None).map_err(|e| invalid(e.to_string()))?;
        let (manifest_bytes, manifest_digest, index_digest) = match kind {
            ManifestKind::Manifest => (top.clone(), top_digest.clone(), None),
            ManifestKind::Index => {
                let idx = Index::parse(&top).map_err(|e| invalid(e.to_string()))?;
                let desc = idx.select(&want).ok_or_else(|| {
                    (
                        RegistryError::Platform {
                            reference: rs.clone(),
                            wanted: want.to_string(),
                            available: idx.platforms().join(", "),
                        },
                        true,
                    )
                })?;
                if desc.size > MAX_DOCUMENT_SIZE {
                    return Err(invalid("manifest larger than 8 MiB".into()));
                }
                let child = ep.oci_ref.clone_with_digest(desc.digest.to_string());
                let (m, d) = self
                    .fetch_manifest(ep, &child, &rs, false)
                    .await
                    .map_err(e1)?;
                if d != desc.digest || m.len() as u64 != desc.size {
                    return Err(invalid(format!(
                        "manifest {} does not match its index entry",
                        desc.digest
                    )));
                }
                (m, d, Some(top_digest.clone()))
            }
        };
        let m = Manifest::parse(&manifest_bytes).map_err(|e| invalid(e.to_string()))?;

        // Config first: it names the layers' diff-ids.
        let mut lease = store.lease();
        let config_bytes = self
            .fetch_config(store, ep, &rs, &m.config, &opts.progress, &mut lease)
            .await
            .map_err(e1)?;
        let config = ImageConfig::parse(&config_bytes).map_err(|e| invalid(e.to_string()))?;
        if config.rootfs.diff_ids.len() != m.layers.len() {
            return Err(invalid(format!(
                "config lists {} layers, manifest {}",
                config.rootfs.diff_ids.len(),
                m.layers.len()
            )));
        }
        let have = config.platform();
        if !want.matches(&have) {
            if opts.platform.is_some() {
                return Err((
                    RegistryError::Platform {
                        reference: rs.clone(),
                        wanted: want.to_string(),
                        available: have.to_string(),
                    },
                    true,
                ));
            }
            tracing::warn!(image = %rs, platform = %have, host = %want, "image platform does not match the host");
        }

        for l in &m.layers {
            opts.progress
                .emit(&l.digest, 0, Some(l.size), Phase::Waiting);
        }
        let tasks = m
            .layers
            .iter()
            .zip(config.rootfs.diff_ids.iter())
            .map(|(desc, diff)| self.pull_layer(store, ep, &rs, desc, diff, &opts.progress));
        let results = futures_util::future::join_all(tasks).await;
        let mut layers = Vec::new();
        let mut leases: Vec<Lease> = Vec::new();
        for res in results {
            let (l, le) = res.map_err(e1)?;
            layers.push(l);
            leases.push(le);
        }

        let st = store.clone();
        let top2 = top.clone();
        let mb = manifest_bytes.clone();
        let record = ImageRecord {
            id: m.config.digest.clone(),
            config_media_type: m.config.media_type.clone(),
            manifest: manifest_digest.clone(),
            manifest_media_type: m.media_type_or_default().to_owned(),
            index: index_digest.clone(),
            layers,
            repo_digests: [r.with_digest(&top_digest).to_string()].into(),
            platform: have,
            added: crate::inspect::format_time(&chrono::Utc::now()),
            last_tag_time: None,
        };
        let tags: Vec<ImageRef> = if r.digest().is_none() {
            vec![r.clone()]
        } else {
            vec![]
        };
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            st.put_blob(&top2, &mut lease)?;
            st.put_blob(&mb, &mut lease)?;
            st.add_image(record, &tags)?;
            drop(leases);
            drop(lease);
            Ok(())
        })
        .await
        .map_err(|e| e1(join_err(e).into()))?
        .map_err(|e| e1(e.into()))?;
        Ok(Pulled {
            id: m.config.digest.clone(),
            reference: r.clone(),
            digest: top_digest,
            manifest: manifest_digest,
        })
    }

    async fn fetch_manifest(
        &self,
        ep: &Endpoint,
        oci_ref: &oci_client::Reference,
        rs: &str,
        fallback: bool,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let (body, _) = self
            .retry_unless(fallback, || {
                ep.client
                    .pull_manifest_raw(oci_ref, &ep.auth, media::ACCEPTED_MANIFESTS)
            })
            .await
            .map_err(|e| map_err("pull", rs, e))?;
        if body.len() as u64 > MAX_DOCUMENT_SIZE {
            return Err(RegistryError::Invalid {
                op: "pull",
                reference: rs.to_owned(),
                reason: "manifest larger than 8 MiB".into(),
            });
        }
        let digest = Digest::of_bytes(&body);
        if let Some(pinned) = oci_ref.digest() {
            if pinned != digest.to_string() {
                return Err(RegistryError::Invalid {
                    op: "pull",
                    reference: rs.to_owned(),
                    reason: format!("manifest digest mismatch: wanted {pinned}, got {digest}"),
                });
            }
        }
        Ok((body.to_vec(), digest))
    }

    async fn fetch_config(
        &self,
        store: &Arc<Store>,
        ep: &Endpoint,
        rs: &str,
        desc: &Descriptor,
        progress: &Progress,
        lease: &mut Lease,
    ) -> Result<Vec<u8>, RegistryError> {
        let _g = store.lock_key(&blob_key(&desc.digest)).await;
        lease.add(&desc.digest);
        if !store.has_blob(&desc.digest) {
            let st = store.clone();
            let d = desc.clone();
            let (tx, rx) = mpsc::channel(8);
            let consumer = tokio::task::spawn_blocking(move || -> Result<Lease, StoreError> {
                let mut lease = st.lease();
                let mut w = st.blob_writer(Some(&d.digest), Some(d.size))?;
                let mut reader = ChannelReader {
                    rx,
                    cur: Bytes::new(),
                };
                io::copy(&mut reader, &mut w).map_err(|source| StoreError::Io {
                    op: "download config",
                    path: st.blob_path(&d.digest),
                    source,
                })?;
                w.commit(&mut lease)?;
                Ok(lease)
            });
            let mut meter = progress.meter(&desc.digest, Some(desc.size), Phase::Downloading);
            let dl = self.download(ep, rs, desc, tx, &mut meter).await;
            let res = consumer.await.map_err(join_err)?;
            match (dl, res) {
                (_, Ok(l)) => drop(l),
                (Err(e), Err(_)) => return Err(e),
                (Ok(()), Err(e)) => return Err(e.into()),
            }
        }
        let st = store.clone();
        let d = desc.digest.clone();
        Ok(
            tokio::task::spawn_blocking(move || st.read_blob(&d, MAX_DOCUMENT_SIZE))
                .await
                .map_err(join_err)??,
        )
    }

    async fn pull_layer(
        &self,
        store: &Arc<Store>,
        ep: &Endpoint,
        rs: &str,
        desc: &Descriptor,
        diff: &Digest,
        progress: &Progress,
    ) -> Result<(LayerRef, Lease), RegistryError> {
        // Locks first: a pull waiting for another pull's download of the same
        // layer must not hold a download slot.
        let _b = store.lock_key(&blob_key(&desc.digest)).await;
        let _l = store.lock_key(&layer_key(diff)).await;
        let lref = LayerRef {
            diff_id: diff.clone(),
            blob: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            blob_size: desc.size,
        };
        let mut lease = store.lease();
        lease.add(&desc.digest);
        lease.add(diff);
        if store.has_blob(&desc.digest) && store.has_layer(diff) {
            progress.emit(
                &desc.digest,
                desc.size,
                Some(desc.size),
                Phase::AlreadyExists,
            );
            return Ok((lref, lease));
        }
        if store.has_blob(&desc.digest) {
            progress.emit(&desc.digest, desc.size, Some(desc.size), Phase::Extracting);
            let st = store.clone();
            let (d, mt, df) = (desc.digest.clone(), desc.media_type.clone(), diff.clone());
            let le = tokio::task::spawn_blocking(move || -> Result<Lease, StoreError> {
                let mut le = st.lease();
                // We hold the layer lock (async); the locked variant would wait
                // for ourselves.
                st.unpack_blob_unlocked(&d, &mt, &df, &mut le)?;
                Ok(le)
            })
            .await
            .map_err(join_err)??;
            drop(le);
            progress.emit(
                &desc.digest,
                desc.size,
                Some(desc.size),
                Phase::PullComplete,
            );
            return Ok((lref, lease));
        }
        let _permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| RegistryError::Invalid {
                op: "pull",
                reference: rs.to_owned(),
                reason: "download limiter closed".into(),
            })?;
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(64);
        let st = store.clone();
        let (d, df) = (desc.clone(), diff.clone());
        let consumer = tokio::task::spawn_blocking(move || -> Result<Lease, StoreError> {
            let mut le = st.lease();
            st.ingest_layer(
                ChannelReader {
                    rx,
                    cur: Bytes::new(),
                },
                Some(&d.media_type),
                Some((&d.digest, d.size)),
                Some(&df),
                &mut le,
            )?;
            Ok(le)
        });
        let mut meter = progress.meter(&desc.digest, Some(desc.size), Phase::Downloading);
        let dl = self.download(ep, rs, desc, tx, &mut meter).await;
        if dl.is_ok() {
            meter.phase(Phase::Extracting);
        }
        let res = consumer.await.map_err(join_err)?;
        match (dl, res) {
            (_, Ok(le)) => drop(le),
            (Err(e), Err(_)) => return Err(e),
            (Ok(()), Err(e)) => return Err(e.into()),
        }
        meter.set(desc.size);
        meter.phase(Phase::PullComplete);
        Ok((lref, lease))
    }

    /// Streams one blob into `tx`, resuming with `Range` after transient
    /// failures. Never sends more bytes than the descriptor's size.
    async fn download(
        &self,
        ep: &Endpoint,
        rs: &str,
        desc: &Descriptor,
        tx: mpsc::Sender<io::Result<Bytes>>,
        meter: &mut Meter,
    ) -> Result<(), RegistryError> {
        let digest = desc.digest.to_string();
        let no_urls = None;
        // Foreign URLs in descriptors are ignored: moat fetches only from the
        // registry.
        let ld = LayerDescriptor {
            digest: &digest,
            urls: &no_urls,
        };
        let mut offset = 0u64;
        let mut attempt = 0u32;
        let mut total_attempts = 0u32;
        loop {
            total_attempts += 1;
            let started_at = offset;
            let mut failure: Option<OciDistributionError> = None;
            match ep
                .client
                .pull_blob_stream_partial(&ep.oci_ref, &ld, offset, None)
                .await
            {
                Ok(resp) => {
                    let (mut stream, mut skip) = match resp {
                        BlobResponse::Partial(s) => (s, 0),
                        // The server ignored the range: skip what we already have.
                        BlobResponse::Full(s) => (s, offset),
                    };
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(mut chunk) => {
                                if skip > 0 {
                                    let k = usize::try_from(skip.min(chunk.len() as u64))
                                        .unwrap_or(chunk.len());
                                    chunk.advance(k);
                                    skip -= k as u64;
                                    if chunk.is_empty() {
                                        continue;
                                    }
                                }
                                if offset + chunk.len() as u64 > desc.size {
                                    let reason = format!(
                                        "blob {} is larger than its descriptor ({} bytes)",
                                        desc.digest, desc.size
                                    );
                                    let _ = tx.send(Err(io::Error::other(reason.clone()))).await;
                                    return Err(RegistryError::Invalid {
                                        op: "pull",
                                        reference: rs.to_owned(),
                                        reason,
                                    });
                                }
                                offset += chunk.len() as u64;
                                meter.add(chunk.len() as u64);
                                if tx.send(Ok(chunk)).await.is_err() {
                                    // The consumer stopped (and will report why).
                                    return Ok(());
                                }
                            }
                            Err(e) => {
                                failure = Some(OciDistributionError::IoError(e));
                                break;
                            }
                        }
                    }
                }
                Err(e) => failure = Some(e),
            }
            if failure.is_none() && offset == desc.size {
                meter.flush();
                return Ok(());
            }
            let err = failure.unwrap_or_else(|| {
                OciDistributionError::IoError(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "blob {} ended at {offset} of {} bytes",
                        desc.digest, desc.size
                    ),
                ))
            });
            // Progress made this round earns fresh attempts (bounded overall).
            if offset >= started_at + (1 << 20) {
                attempt = 0;
            }
            if !is_transient(&err) || attempt + 1 >= self.cfg.max_attempts || total_attempts >= 50 {
                let e = map_err("pull", rs, err);
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                return Err(e);
            }
            tracing::debug!(blob = %desc.digest, offset, error = %err, "blob download interrupted; resuming");
            meter.phase(Phase::Retrying);
            tokio::time::sleep(self.backoff(attempt)).await;
            attempt += 1;
            meter.phase(Phase::Downloading);
        }
    }

    /// Pushes image `name` from `store` to `opts.target` (default: `name`).
    pub async fn push(
        &self,
        store: &Arc<Store>,
        name: &str,
        opts: &PushOptions,
    ) -> Result<Pushed, RegistryError> {
        let id = store.resolve(name)?;
        let img = store.get(&id)?;
        let target = ImageRef::parse(opts.target.as_deref().unwrap_or(name))?;
        let rs = target.to_string();
        if target.digest().is_some() {
            return Err(RegistryError::Invalid {
                op: "push",
                reference: rs,
                reason: "cannot push to a digest reference".into(),
            });
        }
        let endpoints = self.endpoints("push", &target, opts.auth.as_ref(), false)?;
        let mut last = None;
        for (i, ep) in endpoints.iter().enumerate() {
            let fallback = endpoints[i + 1..].iter().any(|e| e.host == ep.host);
            match self.push_to(store, &img, &target, ep, opts, fallback).await {
                Ok(p) => return Ok(p),
                Err((e, answered)) => {
                    let next = !answered
                        && matches!(&e, RegistryError::Remote { source, .. } if is_transport(source));
                    if next {
                        last = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Invalid {
            op: "push",
            reference: rs,
            reason: "no endpoint to push to".into(),
        }))
    }

    async fn push_to(
        &self,
        store: &Arc<Store>,
        img: &ImageRecord,
        target: &ImageRef,
        ep: &Endpoint,
        opts: &PushOptions,
        fallback: bool,
    ) -> Result<Pushed, (RegistryError, bool)> {
        let rs = target.to_string();
        // Authenticate for push up front (a bearer-token registry needs a
        // push-scoped token).
        if ep.auth != RegistryAuth::Anonymous {
            self.retry_unless(fallback, || {
                ep.client
                    .auth(&ep.oci_ref, &ep.auth, oci_client::RegistryOperation::Push)
            })
            .await
            .map_err(|e| (map_err("push", &rs, e), false))?;
        } else {
            ep.client
                .store_auth_if_needed(ep.oci_ref.resolve_registry(), &ep.auth)
                .await;
        }
        // The first request decides whether this scheme works at all.
        let first = img.id.to_string();
        self.retry_unless(fallback, || ep.client.blob_exists(&ep.oci_ref, &first))
            .await
            .map_err(|e| (map_err("push", &rs, e), false))?;
        lock(&self.schemes).insert(ep.host.clone(), ep.scheme);

        let mut blobs: Vec<(Digest, u64)> = img
            .layers
            .iter()
            .map(|l| (l.blob.clone(), l.blob_size))
            .collect();
        blobs.push((
            img.id.clone(),
            store.blob_size(&img.id).map_err(|e| (e.into(), true))?,
        ));
        let tasks = blobs
            .iter()
            .map(|(d, size)| self.push_blob(store, ep, &rs, d, *size, &opts.progress));
        for r in futures_util::future::join_all(tasks).await {
            r.map_err(|e| (e, true))?;
        }
        let st = store.clone();
        let md = img.manifest.clone();
        let manifest = tokio::task::spawn_blocking(move || st.read_blob(&md, MAX_DOCUMENT_SIZE))
            .await
            .map_err(|e| (join_err(e).into(), true))?
            .map_err(|e| (e.into(), true))?;
        let ct = reqwest_header(&img.manifest_media_type).map_err(|reason| {
            (
                RegistryError::Invalid {
                    op: "push",
                    reference: rs.clone(),
                    reason,
                },
                true,
            )
        })?;
        let body = Bytes::from(manifest.clone());
        self.retry(|| {
            ep.client
                .push_manifest_raw(&ep.oci_ref, body.clone(), ct.clone())
        })
        .await
        .map_err(|e| (map_err("push", &rs, e), true))?;
        let digest = img.manifest.clone();
        let st = store.clone();
        let (id, rd) = (img.id.clone(), target.with_digest(&digest));
        tokio::task::spawn_blocking(move || st.add_repo_digest(&id, &rd))
            .await
            .map_err(|e| (join_err(e).into(), true))?
            .map_err(|e| (e.into(), true))?;
        Ok(Pushed {
            reference: target.clone(),
            digest,
            size: manifest.len() as u64,
        })
    }

    async fn push_blob(
        &self,
        store: &Arc<Store>,
        ep: &Endpoint,
        rs: &str,
        d: &Digest,
        size: u64,
        progress: &Progress,
    ) -> Result<(), RegistryError> {
        let _permit = self
            .uploads
            .acquire()
            .await
            .map_err(|_| RegistryError::Invalid {
                op: "push",
                reference: rs.to_owned(),
                reason: "upload limiter closed".into(),
            })?;
        let ds = d.to_string();
        if self
            .retry(|| ep.client.blob_exists(&ep.oci_ref, &ds))
            .await
            .map_err(|e| map_err("push", rs, e))?
        {
            progress.emit(d, size, Some(size), Phase::AlreadyExists);
            return Ok(());
        }
        let path = store.blob_path(d);
        self.retry(|| {
            let path = path.clone();
            let meter = progress.meter(d, Some(size), Phase::Pushing);
            let ds = ds.clone();
            async move {
                let f = tokio::fs::File::open(&path).await?;
                let stream =
                    futures_util::stream::try_unfold((f, meter), |(mut f, mut m)| async move {
                        use tokio::io::AsyncReadExt;
                        let mut buf = vec![0u8; 1 << 20];
                        let n = f.read(&mut buf).await.map_err(OciDistributionError::from)?;
                        if n == 0 {
                            m.flush();
                            return Ok(None);
                        }
                        buf.truncate(n);
                        m.add(n as u64);
                        Ok(Some((Bytes::from(buf), (f, m))))
                    });
                ep.client
                    .push_blob_stream(&ep.oci_ref, stream, &ds, Some(size))
                    .await
            }
        })
        .await
        .map_err(|e| map_err("push", rs, e))?;
        progress.emit(d, size, Some(size), Phase::Pushed);
        Ok(())
    }
}

fn reqwest_header(v: &str) -> Result<http::HeaderValue, String> {
    http::HeaderValue::from_str(v).map_err(|e| format!("bad media type {v:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_registry_rules() {
        let r = Registry::new(RegistryConfig {
            insecure_registries: vec![
                "myreg:5000".into(),
                "10.1.0.0/16".into(),
                "http://other.example/".into(),
            ],
            ..RegistryConfig::default()
        });
        assert!(r.is_insecure("myreg:5000"));
        assert!(!r.is_insecure("myreg:5001"));
        assert!(r.is_insecure("10.1.2.3:5000"));
        assert!(!r.is_insecure("10.2.0.1:5000"));
        assert!(r.is_insecure("other.example"));
        assert!(r.is_insecure("127.0.0.1:5000"));
        assert!(r.is_insecure("localhost:5000"));
        assert!(r.is_insecure("[::1]:5000"));
        assert!(!r.is_insecure("quay.io"));
        let strict = Registry::new(RegistryConfig {
            insecure_loopback: false,
            ..RegistryConfig::default()
        });
        assert!(!strict.is_insecure("127.0.0.1:5000"));
        assert_eq!(
            strict.schemes_for("127.0.0.1:5000", None),
            vec![Scheme::Https]
        );
        assert_eq!(
            r.schemes_for("myreg:5000", None),
            vec![Scheme::HttpsNoVerify, Scheme::Http]
        );
    }

    #[test]
    fn mirrors_only_for_docker_hub_pulls() {
        let r = Registry::new(RegistryConfig {
            registry_mirrors: vec![
                "http://127.0.0.1:5001".into(),
                "https://mirror.example".into(),
            ],
            docker_config_dir: Some(PathBuf::from("/nonexistent")),
            ..RegistryConfig::default()
        });
        let hub = ImageRef::parse("busybox").unwrap();
        let eps = r.endpoints("pull", &hub, None, true).unwrap();
        let hosts: Vec<(&str, Scheme, bool)> = eps
            .iter()
            .map(|e| (e.host.as_str(), e.scheme, e.mirror))
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("127.0.0.1:5001", Scheme::Http, true),
                ("mirror.example", Scheme::Https, true),
                ("index.docker.io", Scheme::Https, false)
            ]
        );
        assert_eq!(eps[0].oci_ref.resolve_registry(), "127.0.0.1:5001");
        let other = ImageRef::parse("quay.io/a/b").unwrap();
        assert_eq!(r.endpoints("pull", &other, None, true).unwrap().len(), 1);
        assert_eq!(r.endpoints("push", &hub, None, false).unwrap().len(), 1);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let r = Registry::new(RegistryConfig::default());
        assert_eq!(r.backoff(0), Duration::from_millis(250));
        assert_eq!(r.backoff(2), Duration::from_millis(1000));
        assert_eq!(r.backoff(30), Duration::from_secs(10));
    }

    #[test]
    fn error_mapping() {
        let e = map_err(
            "pull",
            "x",
            OciDistributionError::ServerError {
                code: 404,
                url: "u".into(),
                message: "nope".into(),
            },
        );
        assert!(matches!(e, RegistryError::NotFound { .. }));
        let e = OciDistributionError::ServerError {
            code: 503,
            url: "u".into(),
            message: "busy".into(),
        };
        assert!(is_transient(&e));
        assert!(!is_transient(&OciDistributionError::UnauthorizedError {
            url: "u".into()
        }));
        assert!(is_transient(&OciDistributionError::IoError(
            io::Error::other("reset")
        )));
    }

    #[test]
    fn host_ip_parsing() {
        assert_eq!(
            host_ip("127.0.0.1:5000"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(host_ip("[::1]:5000"), Some("::1".parse().unwrap()));
        assert_eq!(host_ip("::1"), Some("::1".parse().unwrap()));
        assert_eq!(host_ip("example.com:5000"), None);
        assert!(cidr_contains("10.0.0.0/8", "10.9.9.9".parse().unwrap()));
        assert!(!cidr_contains("10.0.0.0/8", "11.0.0.1".parse().unwrap()));
        assert!(!cidr_contains("garbage", "11.0.0.1".parse().unwrap()));
    }
}
