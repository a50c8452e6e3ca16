//! End-to-end tests of the registry client against a real registry (Debian's
//! `docker-registry`), with `skopeo` as the independent cross-check.

mod images_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use images_support::*;
use moat_images::registry::{Phase, Progress, PullOptions, PushOptions, Registry, RegistryConfig};

fn client() -> Registry {
    Registry::new(RegistryConfig {
        docker_config_dir: Some("/nonexistent".into()),
        ..RegistryConfig::default()
    })
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
    let complete: Vec<_> = ev
        .iter()
        .filter(|e| e.phase == Phase::PullComplete)
        .collect();
    assert_eq!(complete.len(), 3, "one PullComplete per layer");
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
    let mut phases = HashMap::new();
    while let Ok(e) = rx.try_recv() {
        *phases.entry(e.phase).or_insert(0) += 1;
    }
    assert_eq!(phases.get(&Phase::AlreadyExists), Some(&3));
    assert_eq!(phases.get(&Phase::Downloading), None);
}
