//! End-to-end tests of the registry client against a real registry (Debian's
//! `docker-registry`), with `skopeo` and `umoci` as independent cross-checks.

mod images_support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use images_support::*;
use moat_images::registry::{
    Credentials, Phase, Progress, PullOptions, PushOptions, Registry, RegistryConfig, RegistryError,
};
use moat_images::{Digest, Platform};

fn client() -> Registry {
    Registry::new(RegistryConfig {
        docker_config_dir: Some("/nonexistent".into()),
        ..RegistryConfig::default()
    })
}

fn phases(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<moat_images::registry::ProgressEvent>,
) -> HashMap<Phase, usize> {
    let mut m = HashMap::new();
    while let Ok(e) = rx.try_recv() {
        *m.entry(e.phase).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_then_pull_roundtrip_with_progress() {
    if !(root() && have(&["/usr/bin/docker-registry", "/bin/busybox"])) {
        return;
    }
    let reg = RegistryProc::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let name = format!("{}/test/busybox:1", reg.host());
    let id = build_busybox(&a, &name);
    let r = client();
    let pushed = r.push(&a, &name, &PushOptions::default()).await.unwrap();
    assert_eq!(a.get(&id).unwrap().manifest, pushed.digest);

    let b = store(&tmp.path().join("b"));
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev2 = events.clone();
    let opts = PullOptions {
        progress: Progress::callback(move |e| ev2.lock().unwrap().push(e)),
        ..PullOptions::default()
    };
    let pulled = r.pull(&b, &name, &opts).await.unwrap();
    assert_eq!(pulled.id, id);
    assert_eq!(pulled.digest, pushed.digest);
    check_busybox_layers(&b, &name);
    let inspect = b.inspect(&name).unwrap();
    assert_eq!(inspect.repo_tags, vec![name.clone()]);
    assert_eq!(
        inspect.repo_digests,
        vec![format!("{}/test/busybox@{}", reg.host(), pushed.digest)]
    );
    let ev = events.lock().unwrap().clone();
    assert_eq!(
        ev.iter().filter(|e| e.phase == Phase::PullComplete).count(),
        3
    );
    assert!(ev
        .iter()
        .any(|e| e.phase == Phase::Downloading && e.total.is_some()));

    // Pulling again downloads nothing.
    let (p, mut rx) = Progress::channel();
    r.pull(
        &b,
        &name,
        &PullOptions {
            progress: p,
            ..PullOptions::default()
        },
    )
    .await
    .unwrap();
    let ph = phases(&mut rx);
    assert_eq!(ph.get(&Phase::AlreadyExists), Some(&3));
    assert_eq!(ph.get(&Phase::Downloading), None);

    // By digest: no tag, a repo digest.
    let c = store(&tmp.path().join("c"));
    let by_digest = format!("{}/test/busybox@{}", reg.host(), pushed.digest);
    r.pull(&c, &by_digest, &PullOptions::default())
        .await
        .unwrap();
    assert!(c.tags(&id).is_empty());
    assert_eq!(c.resolve(&by_digest).unwrap(), id);
    // Pushing again: every blob already exists.
    let (p, mut rx) = Progress::channel();
    r.push(
        &a,
        &name,
        &PushOptions {
            progress: p,
            ..PushOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(phases(&mut rx).get(&Phase::AlreadyExists), Some(&4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_download_each_layer_once() {
    if !(root() && have(&["/usr/bin/docker-registry", "/bin/busybox"])) {
        return;
    }
    let reg = RegistryProc::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let name = format!("{}/dedup/busybox:1", reg.host());
    build_busybox(&a, &name);
    let r = client();
    r.push(&a, &name, &PushOptions::default()).await.unwrap();
    // A second name for the same content: a different manifest path, same blobs.
    let b = store(&tmp.path().join("b"));
    let (p, mut rx) = Progress::channel();
    let opts = PullOptions {
        progress: p,
        ..PullOptions::default()
    };
    let (x, y, z) = tokio::join!(
        r.pull(&b, &name, &opts),
        r.pull(&b, &name, &opts),
        r.pull(&b, &name, &opts)
    );
    assert_eq!(x.unwrap().id, y.unwrap().id);
    z.unwrap();
    let ph = phases(&mut rx);
    assert_eq!(ph.get(&Phase::PullComplete), Some(&3), "{ph:?}");
    assert_eq!(ph.get(&Phase::AlreadyExists), Some(&6), "{ph:?}");
    check_busybox_layers(&b, &name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_and_umoci_read_what_moat_pushes() {
    if !(root()
        && have(&[
            "/usr/bin/docker-registry",
            "/bin/busybox",
            "skopeo",
            "umoci",
        ]))
    {
        return;
    }
    let reg = RegistryProc::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let name = format!("{}/x/busybox:1", reg.host());
    build_busybox(&a, &name);
    client()
        .push(&a, &name, &PushOptions::default())
        .await
        .unwrap();
    let layout = tmp.path().join("layout");
    skopeo_copy(
        &format!("docker://{name}"),
        &format!("oci:{}:1", layout.display()),
        false,
    );
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:1", layout.display()),
        bundle.to_str().unwrap(),
    ]));
    let rootfs = bundle.join("rootfs");
    // umoci applied our layers: whiteout and opaque directory honoured.
    assert!(rootfs.join("bin/busybox").is_file());
    assert!(rootfs.join("etc/passwd").is_file());
    assert!(!rootfs.join("etc/motd").exists(), "whiteout applied");
    assert!(
        !rootfs.join("var/cache/old-1").exists(),
        "opaque dir applied"
    );
    assert_eq!(
        std::fs::read(rootfs.join("var/cache/new")).unwrap(),
        b"fresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moat_pulls_what_skopeo_pushes_with_platform_selection() {
    if !(root() && have(&["/usr/bin/docker-registry", "/bin/busybox", "skopeo", "zstd"])) {
        return;
    }
    let reg = RegistryProc::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let layers = busybox_layers();
    let amd = oci_image(
        &layout,
        "amd64",
        &[
            OciLayer::gzip(&layers[0]),
            OciLayer::zstd(&layers[1]),
            OciLayer::gzip(&layers[2]),
        ],
    );
    let arm_layer = tar_layer(&[E::File("arch", b"arm64", 0o644)]);
    let arm = oci_image(&layout, "arm64", &[OciLayer::gzip(&arm_layer)]);
    oci_index(
        &layout,
        "multi",
        &[
            (amd.0.clone(), amd.1, "amd64"),
            (arm.0.clone(), arm.1, "arm64"),
        ],
    );
    let name = format!("{}/multi/img:1", reg.host());
    skopeo_copy(
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{name}"),
        true,
    );

    let r = client();
    let s = store(&tmp.path().join("s"));
    let host = r.pull(&s, &name, &PullOptions::default()).await.unwrap();
    assert_eq!(host.id, amd.2, "the host's platform (amd64)");
    assert_eq!(host.manifest, amd.0);
    assert_ne!(host.digest, host.manifest, "pulled through the index");
    check_busybox_layers(&s, &name);

    let s2 = store(&tmp.path().join("s2"));
    let opts = PullOptions {
        platform: Some(Platform::parse("linux/arm64").unwrap()),
        ..PullOptions::default()
    };
    let armp = r.pull(&s2, &name, &opts).await.unwrap();
    assert_eq!(armp.id, arm.2);
    assert_eq!(
        std::fs::read(s2.layer_dirs(&name).unwrap()[0].join("arch")).unwrap(),
        b"arm64"
    );
    assert_eq!(s2.inspect(&name).unwrap().architecture, "arm64");

    let opts = PullOptions {
        platform: Some(Platform::parse("linux/s390x").unwrap()),
        ..PullOptions::default()
    };
    let e = r.pull(&s2, &name, &opts).await.unwrap_err();
    assert!(matches!(e, RegistryError::Platform { .. }), "{e}");
    assert!(e.to_string().contains("linux/arm64"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_layers_from_a_registry_are_refused() {
    if !(root() && have(&["/usr/bin/docker-registry", "skopeo"])) {
        return;
    }
    let reg = RegistryProc::start();
    let tmp = tempfile::tempdir().unwrap();
    let canary = tmp.path().join("canary");
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("file"), b"canary").unwrap();
    let r = client();

    // A symlink to the canary directory, then a file written through it.
    let evil = tar_layer(&[
        E::Symlink("escape", canary.to_str().unwrap()),
        E::File("escape/file", b"pwned", 0o644),
    ]);
    // A layer whose content does not match the config's diff-id.
    let honest = tar_layer(&[E::File("a", b"a", 0o644)]);
    let mut lying = OciLayer::gzip(&honest);
    lying.diff_id = Digest::of_bytes(b"not the layer");
    for (i, layer) in [OciLayer::gzip(&evil), lying].into_iter().enumerate() {
        let layout = tmp.path().join(format!("layout{i}"));
        let m = oci_image(&layout, "amd64", &[layer]);
        oci_index(&layout, "t", &[(m.0, m.1, "amd64")]);
        let name = format!("{}/evil/img{i}:1", reg.host());
        skopeo_copy(
            &format!("oci:{}:t", layout.display()),
            &format!("docker://{name}"),
            false,
        );
        let s = store(&tmp.path().join(format!("s{i}")));
        let e = r
            .pull(&s, &name, &PullOptions::default())
            .await
            .unwrap_err();
        let msg = e.to_string();
        if i == 0 {
            assert!(msg.contains("traverses a symlink"), "{msg}");
        } else {
            assert!(msg.contains("diff-id mismatch"), "{msg}");
        }
        assert!(s.images().is_empty());
        assert_eq!(
            std::fs::read_dir(s.root().join("layers/sha256"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(std::fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
        assert_eq!(std::fs::read(canary.join("file")).unwrap(), b"canary");
        assert_eq!(std::fs::read_dir(&canary).unwrap().count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn basic_auth_with_htpasswd_and_docker_config() {
    if !(root() && have(&["/usr/bin/docker-registry", "/bin/busybox", "python3"])) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_line("alice", "s3cret") + "\n").unwrap();
    let reg = RegistryProc::start_with(
        &format!(
            "auth:\n  htpasswd:\n    realm: moat-test\n    path: {}\n",
            htpasswd.display()
        ),
        None,
    );
    let a = store(&tmp.path().join("a"));
    let name = format!("{}/private/busybox:1", reg.host());
    build_busybox(&a, &name);

    // Anonymous: refused.
    let anon = client();
    let e = anon
        .push(&a, &name, &PushOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    // Explicit credentials (the Engine API's X-Registry-Auth).
    let creds = Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    anon.push(
        &a,
        &name,
        &PushOptions {
            auth: Some(creds),
            ..PushOptions::default()
        },
    )
    .await
    .unwrap();
    // Credentials from a DOCKER_CONFIG directory.
    let cfg_dir = tmp.path().join("docker-config");
    std::fs::create_dir(&cfg_dir).unwrap();
    write_docker_config(
        &cfg_dir,
        &format!("http://{}", reg.host()),
        "alice",
        "s3cret",
    );
    let with_cfg = Registry::new(RegistryConfig {
        docker_config_dir: Some(cfg_dir.clone()),
        ..RegistryConfig::default()
    });
    let b = store(&tmp.path().join("b"));
    with_cfg
        .pull(&b, &name, &PullOptions::default())
        .await
        .unwrap();
    check_busybox_layers(&b, &name);
    // Wrong password.
    write_docker_config(&cfg_dir, &reg.host(), "alice", "wrong");
    let c = store(&tmp.path().join("c"));
    let e = with_cfg
        .pull(&c, &name, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    let e = anon
        .pull(&c, &name, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interrupted_downloads_resume_with_range() {
    if !(root() && have(&["/usr/bin/docker-registry", "/bin/busybox"])) {
        return;
    }
    let reg = RegistryProc::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let name = format!("{}/flaky/busybox:1", reg.host());
    build_busybox(&a, &name);
    client()
        .push(&a, &name, &PushOptions::default())
        .await
        .unwrap();
    // Every connection that carries more than 200 kB is cut, three times.
    let proxy = FlakyProxy::start(reg.port, 3, 200_000);
    let via = format!("127.0.0.1:{}/flaky/busybox:1", proxy.port);
    let r = Registry::new(RegistryConfig {
        docker_config_dir: Some("/nonexistent".into()),
        initial_backoff: std::time::Duration::from_millis(20),
        ..RegistryConfig::default()
    });
    let b = store(&tmp.path().join("b"));
    let (p, mut rx) = Progress::channel();
    r.pull(
        &b,
        &via,
        &PullOptions {
            progress: p,
            ..PullOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        proxy.cut.load(Ordering::SeqCst),
        3,
        "the proxy cut three transfers"
    );
    assert!(phases(&mut rx).contains_key(&Phase::Retrying));
    check_busybox_layers(&b, &via);
    // Resumed, not restarted: the proxy carried each blob byte about once.
    let blobs: u64 = b
        .get(&b.resolve(&via).unwrap())
        .unwrap()
        .layers
        .iter()
        .map(|l| l.blob_size)
        .sum();
    let served = proxy.served.load(Ordering::SeqCst) as u64;
    assert!(
        served < blobs + 100_000,
        "served {served} bytes for {blobs} bytes of layers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_errors_are_retried() {
    if !(root() && have(&["/usr/bin/docker-registry", "/bin/busybox"])) {
        return;
    }
    let reg = RegistryProc::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let name = format!("{}/five/busybox:1", reg.host());
    build_busybox(&a, &name);
    client()
        .push(&a, &name, &PushOptions::default())
        .await
        .unwrap();
    let proxy = FlakyProxy::start_failing(reg.port, 2);
    let via = format!("127.0.0.1:{}/five/busybox:1", proxy.port);
    let r = Registry::new(RegistryConfig {
        docker_config_dir: Some("/nonexistent".into()),
        initial_backoff: std::time::Duration::from_millis(20),
        ..RegistryConfig::default()
    });
    let b = store(&tmp.path().join("b"));
    r.pull(&b, &via, &PullOptions::default()).await.unwrap();
    assert_eq!(
        proxy.cut.load(Ordering::SeqCst),
        2,
        "two 503 answers were retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_hub_mirror_is_used() {
    if !(root() && have(&["/usr/bin/docker-registry", "/bin/busybox"])) {
        return;
    }
    let reg = RegistryProc::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let in_mirror = format!("{}/library/mirrortest:1", reg.host());
    let id = build_busybox(&a, &in_mirror);
    client()
        .push(&a, &in_mirror, &PushOptions::default())
        .await
        .unwrap();
    let r = Registry::new(RegistryConfig {
        registry_mirrors: vec![format!("http://{}", reg.host())],
        docker_config_dir: Some("/nonexistent".into()),
        max_attempts: 1,
        connect_timeout: std::time::Duration::from_secs(3),
        ..RegistryConfig::default()
    });
    let b = store(&tmp.path().join("b"));
    let p = r
        .pull(&b, "mirrortest:1", &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(p.id, id);
    assert_eq!(b.resolve("docker.io/library/mirrortest:1").unwrap(), id);
    assert_eq!(
        b.inspect("mirrortest:1").unwrap().repo_tags,
        vec!["mirrortest:1"]
    );
    // Not in the mirror: falls back to Docker Hub, unreachable here.
    assert!(r
        .pull(&b, "not-in-mirror:1", &PullOptions::default())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn insecure_registries_setting() {
    if !(root() && have(&["/usr/bin/docker-registry", "/bin/busybox", "openssl"])) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let strict = || {
        Registry::new(RegistryConfig {
            insecure_loopback: false,
            docker_config_dir: Some("/nonexistent".into()),
            max_attempts: 1,
            ..RegistryConfig::default()
        })
    };
    let listed = |host: String| {
        Registry::new(RegistryConfig {
            insecure_loopback: false,
            insecure_registries: vec![host],
            docker_config_dir: Some("/nonexistent".into()),
            ..RegistryConfig::default()
        })
    };
    // Plain HTTP registry.
    let plain = RegistryProc::start();
    let a = store(&tmp.path().join("a"));
    let name = format!("{}/i/busybox:1", plain.host());
    build_busybox(&a, &name);
    assert!(strict()
        .push(&a, &name, &PushOptions::default())
        .await
        .is_err());
    listed(plain.host())
        .push(&a, &name, &PushOptions::default())
        .await
        .unwrap();
    let b = store(&tmp.path().join("b"));
    assert!(strict()
        .pull(&b, &name, &PullOptions::default())
        .await
        .is_err());
    listed(plain.host())
        .pull(&b, &name, &PullOptions::default())
        .await
        .unwrap();

    // TLS registry with a self-signed certificate.
    let (cert, key) = self_signed(tmp.path());
    let tls = RegistryProc::start_with("", Some((&cert, &key)));
    let tname = format!("{}/i/busybox:1", tls.host());
    a.tag(&name, &tname).unwrap();
    let e = strict()
        .push(&a, &tname, &PushOptions::default())
        .await
        .unwrap_err();
    assert!(!e.to_string().is_empty());
    listed(tls.host())
        .push(&a, &tname, &PushOptions::default())
        .await
        .unwrap();
    let c = store(&tmp.path().join("c"));
    assert!(strict()
        .pull(&c, &tname, &PullOptions::default())
        .await
        .is_err());
    listed(tls.host())
        .pull(&c, &tname, &PullOptions::default())
        .await
        .unwrap();
    check_busybox_layers(&c, &tname);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bearer_token_auth() {
    if !(root() && have(&["/usr/bin/docker-registry", "/bin/busybox", "openssl"])) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(tmp.path(), "moat-test", "alice", "s3cret");
    let reg = RegistryProc::start_with(&tokens.registry_config("moat-test"), None);
    let a = store(&tmp.path().join("a"));
    let name = format!("{}/tok/busybox:1", reg.host());
    build_busybox(&a, &name);
    let creds = Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    };

    let e = client()
        .push(&a, &name, &PushOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    client()
        .push(
            &a,
            &name,
            &PushOptions {
                auth: Some(creds.clone()),
                ..PushOptions::default()
            },
        )
        .await
        .unwrap();
    let b = store(&tmp.path().join("b"));
    let e = client()
        .pull(&b, &name, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    client()
        .pull(
            &b,
            &name,
            &PullOptions {
                auth: Some(creds),
                ..PullOptions::default()
            },
        )
        .await
        .unwrap();
    check_busybox_layers(&b, &name);
    assert!(
        tokens.issued.load(Ordering::SeqCst) >= 3,
        "tokens were issued"
    );
}

/// More layers than download slots, with every slot count: a pull must never
/// wait for a slot it already holds (a double acquisition deadlocked here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_layers_than_download_slots() {
    if !(root() && have(&["/usr/bin/docker-registry", "/bin/busybox"])) {
        return;
    }
    let reg = RegistryProc::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));
    let name = format!("{}/slots/img:1", reg.host());
    let mut b = moat_images::build::ImageBuilder::new(&a);
    for i in 0..6u8 {
        let l = tar_layer(&[E::File("f", &vec![i; 300_000], 0o644)]);
        b.add_layer(&a, &l[..], "layer", None).unwrap();
    }
    let id = b
        .commit(&a, &[moat_images::ImageRef::parse(&name).unwrap()])
        .unwrap();
    client()
        .push(&a, &name, &PushOptions::default())
        .await
        .unwrap();
    for slots in 1..=4 {
        let r = Registry::new(RegistryConfig {
            docker_config_dir: Some("/nonexistent".into()),
            max_concurrent_downloads: slots,
            ..RegistryConfig::default()
        });
        let s = store(&tmp.path().join(format!("s{slots}")));
        let p = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            r.pull(&s, &name, &PullOptions::default()),
        )
        .await
        .unwrap_or_else(|_| panic!("pull with {slots} download slots hung"))
        .unwrap();
        assert_eq!(p.id, id);
    }
}
