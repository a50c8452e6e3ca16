//! Image references with Docker's normalisation (`busybox` →
//! `docker.io/library/busybox:latest`), built on `oci_spec::distribution::Reference`
//! (re-exported by `oci-client`). Owns reference syntax and the familiar (short)
//! spelling; it must not resolve references against the store or a registry.

use std::fmt;

use oci_spec::distribution::Reference;

use crate::digest::Digest;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

/// Reference parse errors.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Not a valid reference.
    #[error("parse reference {input:?}: {reason}")]
    Invalid {
        /// What the caller gave.
        input: String,
        /// Why it was refused.
        reason: String,
    },
}

fn invalid(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::Invalid {
        input: input.chars().take(300).collect(),
        reason: reason.into(),
    }
}

/// A normalised image reference: registry, repository, and a tag and/or digest.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises a reference. A reference without tag or digest gets
    /// the tag `latest`. Refuses 64-hex repository names (they would be confused
    /// with image IDs, as Docker refuses them) and non-sha256 digests.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(invalid(input, "empty reference"));
        }
        if input.len() > 512 {
            return Err(invalid(input, "reference longer than 512 bytes"));
        }
        let inner: Reference = input
            .parse()
            .map_err(|e: oci_spec::distribution::ParseError| invalid(input, e.to_string()))?;
        // oci-spec reads a first component without `.` or `:` (and not
        // `localhost`) as a Docker Hub path even when it has upper-case letters;
        // Docker reads it as a registry host. Repository paths are lower-case,
        // so refuse it instead of pulling something else than Docker would.
        if inner.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                input,
                "repository name must be lowercase (a registry host needs a '.' or a ':port')",
            ));
        }
        let last = inner.repository().rsplit('/').next().unwrap_or("");
        if inner.repository() == format!("library/{last}")
            && last.len() == 64
            && last.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(invalid(
                input,
                "cannot specify 64-byte hexadecimal strings as a repository name",
            ));
        }
        let digest = match inner.digest() {
            Some(d) => Some(Digest::parse(d).map_err(|e| invalid(input, e.to_string()))?),
            None => None,
        };
        let inner = match (inner.tag(), &digest) {
            (None, None) => Reference::with_tag(
                inner.registry().to_owned(),
                inner.repository().to_owned(),
                "latest".to_owned(),
            ),
            _ => inner,
        };
        Ok(Self { inner, digest })
    }

    /// Builds `registry/repository:tag`.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        Self::parse(&format!("{}:{tag}", self.name()))
    }

    /// Builds `registry/repository@digest`.
    pub fn with_digest(&self, digest: &Digest) -> Self {
        Self {
            inner: Reference::with_digest(
                self.inner.registry().to_owned(),
                self.inner.repository().to_owned(),
                digest.to_string(),
            ),
            digest: Some(digest.clone()),
        }
    }

    /// Registry host (and port), `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// Repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// Tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// Digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// The name as Docker shows it: `busybox`, `user/app`, `host:5000/app`.
    pub fn familiar_name(&self) -> String {
        familiar_name(&self.name())
    }

    /// The whole reference as Docker shows it (`busybox:latest`).
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        if let Some(t) = self.tag() {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }

    /// The oci-spec reference, for `oci-client`.
    pub fn as_oci(&self) -> &Reference {
        &self.inner
    }
}

/// Familiar spelling of a normalised `registry/repository` name.
pub fn familiar_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("docker.io/") {
        rest.strip_prefix("library/").unwrap_or(rest).to_owned()
    } else {
        name.to_owned()
    }
}

/// Familiar spelling of a normalised `name:tag` or `name@digest` string.
pub fn familiar(full: &str) -> String {
    match ImageRef::parse(full) {
        Ok(r) => r.familiar(),
        Err(_) => full.to_owned(),
    }
}

impl fmt::Display for ImageRef {
    /// The normalised whole reference (`docker.io/library/busybox:latest`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = self.tag() {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageRef({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let cases = [
            (
                "busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "busybox:1.36",
                "docker.io/library/busybox:1.36",
                "busybox:1.36",
            ),
            (
                "library/busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            ("user/app:v1", "docker.io/user/app:v1", "user/app:v1"),
            (
                "127.0.0.1:5000/app",
                "127.0.0.1:5000/app:latest",
                "127.0.0.1:5000/app:latest",
            ),
            (
                "localhost:5000/a/b:T",
                "localhost:5000/a/b:T",
                "localhost:5000/a/b:T",
            ),
            ("quay.io/x/y:1", "quay.io/x/y:1", "quay.io/x/y:1"),
        ];
        for (input, full, fam) in cases {
            let r = ImageRef::parse(input).unwrap();
            assert_eq!(r.to_string(), full, "{input}");
            assert_eq!(r.familiar(), fam, "{input}");
        }
    }

    #[test]
    fn digests() {
        let d = Digest::of_bytes(b"m");
        let r = ImageRef::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(&d));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{d}"));
        assert_eq!(r.familiar(), format!("busybox@{d}"));
        let r2 = ImageRef::parse("h:5000/a:t").unwrap().with_digest(&d);
        assert_eq!(r2.to_string(), format!("h:5000/a@{d}"));
        assert!(ImageRef::parse("busybox@sha256:1234").is_err());
        assert!(ImageRef::parse(&format!("busybox@sha512:{}{}", d.hex(), d.hex())).is_err());
    }

    #[test]
    fn refuses_bad_references() {
        let hex64 = Digest::of_bytes(b"x").hex().to_owned();
        for bad in [
            "",
            "Busybox",
            "user/App",
            "bad name",
            "a//b",
            "-x",
            "busybox:",
            ":tag",
            "x:-tag",
            &hex64,
            &"a".repeat(600),
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
        // Upper-case tags are fine.
        assert_eq!(
            ImageRef::parse("busybox:Latest").unwrap().tag(),
            Some("Latest")
        );
    }

    /// Found by the `manifest` fuzz target: oci-spec files a first component
    /// with upper-case letters and no `.` or `:` under docker.io, giving a
    /// repository path with upper-case letters that no registry accepts and
    /// whose printed form does not parse. Docker reads such a component as a
    /// registry host; moat refuses it.
    #[test]
    fn upper_case_first_component_is_refused_and_accepted_ones_print_back() {
        for bad in ["linuxXa/mr/68", "Host/app", "a/B/c:1"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "busybox",
            "user/app:v1",
            "localhost:5000/a/b:T",
            "quay.io/x/y:1",
            "registry.example.com:5000/library/alpine:3.19",
        ] {
            let r = ImageRef::parse(good).unwrap();
            let again = ImageRef::parse(&r.to_string()).unwrap();
            assert_eq!(again, r, "{good} printed as {r}");
        }
    }

    #[test]
    fn familiar_strings() {
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar_name("docker.io/user/app"), "user/app");
        assert_eq!(familiar_name("h:5000/app"), "h:5000/app");
    }
}
