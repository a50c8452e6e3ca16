//! Image documents from a registry or an archive: OCI and Docker manifests,
//! indexes and image configs, and the strings in them (references, digests,
//! platforms). Parsed documents must survive a JSON round trip, platform
//! selection must pick an entry of the index, and a parsed reference, digest
//! or platform must print as something that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_images::manifest::{classify, ImageConfig, Index, Manifest};
use moat_images::{Digest, ImageRef, Platform};

const HEADERS: [Option<&str>; 5] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, doc)) = data.split_first() else {
        return;
    };
    let _ = classify(doc, HEADERS[usize::from(sel) % HEADERS.len()]);
    if let Ok(m) = Manifest::parse(doc) {
        let _ = m.media_type_or_default();
        let again = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&again).expect("re-parse a manifest"), m);
    }
    if let Ok(i) = Index::parse(doc) {
        let _ = i.platforms();
        for p in [
            "linux/amd64",
            "linux/arm64/v8",
            "linux/arm/v7",
            "windows/amd64",
        ] {
            let want = Platform::parse(p).unwrap();
            if let Some(d) = i.select(&want) {
                assert!(i.manifests.iter().any(|m| std::ptr::eq(m, d)));
            }
        }
    }
    if let Ok(c) = ImageConfig::parse(doc) {
        let _ = c.platform().to_string();
        let again = serde_json::to_vec(&c).unwrap();
        assert_eq!(ImageConfig::parse(&again).expect("re-parse a config"), c);
    }
    if let Ok(s) = std::str::from_utf8(doc) {
        if let Ok(r) = ImageRef::parse(s) {
            let printed = r.to_string();
            let again = ImageRef::parse(&printed).expect("re-parse a printed reference");
            assert!(
                again == r,
                "reference {s:?} printed as {printed:?} parses differently"
            );
        }
        if let Ok(d) = Digest::parse(s) {
            assert!(Digest::parse(&d.to_string()).unwrap() == d);
        }
        if let Ok(p) = Platform::parse(s) {
            let printed = p.to_string();
            assert_eq!(Platform::parse(&printed).expect("re-parse a platform"), p);
        }
    }
});
