//! Platforms (`linux/amd64`, `linux/arm64/v8`, ...): parsing, normalisation of
//! architecture aliases, the host's default, and selection of one manifest from an
//! index. Owns platform matching only; it must not fetch or store anything.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Errors parsing a platform string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    /// Not `os[/arch[/variant]]`.
    #[error("parse platform {0:?}: expected os/arch[/variant]")]
    Malformed(String),
}

/// An image platform.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Architecture in Go/OCI spelling, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// CPU variant, e.g. `v8` for arm64, `v7` for arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Builds a normalised platform.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let os = os.to_ascii_lowercase();
        let (architecture, variant) = normalize_arch(architecture, variant);
        Self {
            os,
            architecture,
            variant,
        }
    }

    /// The platform of the host moat runs on.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Self::new("linux", arch, None)
    }

    /// Parses `os/arch[/variant]` or a bare `arch` (os `linux`).
    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            p.len() <= 32
                && p.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        if !parts.iter().all(ok) {
            return Err(PlatformError::Malformed(s.chars().take(80).collect()));
        }
        match parts.as_slice() {
            [arch] => Ok(Self::new("linux", arch, None)),
            [os, arch] => Ok(Self::new(os, arch, None)),
            [os, arch, variant] => Ok(Self::new(os, arch, Some(variant))),
            _ => Err(PlatformError::Malformed(s.chars().take(80).collect())),
        }
    }

    /// True if an image built for `candidate` runs as `self` was asked for.
    /// os and architecture must match; a requested variant must match the
    /// candidate's (an absent candidate variant counts as the default one).
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match (&self.variant, &candidate.variant) {
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => default_variant(&self.architecture) == Some(want.as_str()),
            (None, Some(have)) => match default_variant(&self.architecture) {
                Some(def) => def == have,
                None => true,
            },
            (None, None) => true,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn default_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.map(|v| v.to_ascii_lowercase());
    match arch.as_str() {
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), variant),
        "aarch64" | "arm64" => {
            // Docker treats "arm64" and "arm64/v8" as the same platform.
            let v = match variant.as_deref() {
                None | Some("8") | Some("v8") => None,
                Some(_) => variant,
            };
            ("arm64".into(), v)
        }
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => {
            let v = match variant.as_deref() {
                Some("5") => Some("v5".into()),
                Some("6") => Some("v6".into()),
                Some("7") => Some("v7".into()),
                _ => variant,
            };
            ("arm".into(), v)
        }
        "i386" | "386" => ("386".into(), variant),
        _ => (arch, variant),
    }
}

/// One entry of an index, as far as platform selection cares.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// The entry's platform, if it declares one.
    pub platform: Option<Platform>,
    /// The entry's media type.
    pub media_type: &'a str,
}

/// Picks the index entry for `want`: the first exact variant match, else the first
/// entry matching under default-variant rules. Entries without a platform or with
/// a non-manifest media type (e.g. attestations) are never picked.
pub fn select(want: &Platform, entries: &[Candidate<'_>]) -> Option<usize> {
    let usable = |c: &Candidate<'_>| crate::media::manifest_kind(c.media_type).is_some();
    let exact = entries.iter().position(|c| {
        usable(c)
            && c.platform.as_ref().is_some_and(|p| {
                p.os == want.os && p.architecture == want.architecture && p.variant == want.variant
            })
    });
    exact.or_else(|| {
        entries
            .iter()
            .position(|c| usable(c) && c.platform.as_ref().is_some_and(|p| want.matches(p)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{OCI_CONFIG, OCI_MANIFEST};

    #[test]
    fn parses_and_normalises() {
        assert_eq!(
            Platform::parse("linux/amd64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::parse("linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/aarch64").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/arm/7").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(Platform::parse("arm64").unwrap().to_string(), "linux/arm64");
        assert_eq!(
            Platform::parse("linux/armhf").unwrap().to_string(),
            "linux/arm/v7"
        );
        for bad in [
            "",
            "linux/",
            "/amd64",
            "a/b/c/d",
            "linux/am d64",
            "linux/../x",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_is_linux() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(h.architecture, "amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(h.architecture, "arm64");
    }

    fn c(p: &str) -> Candidate<'static> {
        let mut parts = p.split('/');
        let os = parts.next().unwrap();
        let arch = parts.next().unwrap();
        let variant = parts.next();
        // Candidates from an index are not normalised by the registry; keep the raw
        // variant to test the matching rules.
        Candidate {
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(str::to_owned),
            }),
            media_type: OCI_MANIFEST,
        }
    }

    #[test]
    fn selects_platform_from_index() {
        let entries = vec![
            c("linux/arm/v6"),
            c("linux/arm/v7"),
            c("linux/arm64/v8"),
            c("linux/amd64"),
            c("windows/amd64"),
        ];
        let amd64 = Platform::parse("linux/amd64").unwrap();
        assert_eq!(select(&amd64, &entries), Some(3));
        let arm64 = Platform::parse("linux/arm64").unwrap();
        assert_eq!(select(&arm64, &entries), Some(2));
        let armv7 = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(select(&armv7, &entries), Some(1));
        let armv5 = Platform::parse("linux/arm/v5").unwrap();
        assert_eq!(select(&armv5, &entries), None);
        let s390 = Platform::parse("linux/s390x").unwrap();
        assert_eq!(select(&s390, &entries), None);
    }

    #[test]
    fn skips_attestations_and_unplatformed_entries() {
        let mut att = c("linux/amd64");
        att.media_type = OCI_CONFIG;
        let none = Candidate {
            platform: None,
            media_type: OCI_MANIFEST,
        };
        let unknown = c("unknown/unknown");
        let entries = vec![att, none, unknown, c("linux/amd64")];
        assert_eq!(
            select(&Platform::parse("linux/amd64").unwrap(), &entries),
            Some(3)
        );
    }

    #[test]
    fn arm64_without_variant_matches_v8_only() {
        let entries = vec![c("linux/arm64/v9"), c("linux/arm64")];
        let want = Platform::parse("linux/arm64").unwrap();
        assert_eq!(select(&want, &entries), Some(1));
        let want_v9 = Platform::parse("linux/arm64/v9").unwrap();
        assert_eq!(select(&want_v9, &entries), Some(0));
    }
}
