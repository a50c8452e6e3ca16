//! Interop with Debian's dockerd: archives made by moat load into dockerd with the
//! same image ID and archives made by dockerd load into moat; images pushed by
//! one are pulled by the other through a local registry.

mod images_support;

use std::process::Command;

use images_support::*;
use moat_images::archive;
use moat_images::registry::{PullOptions, PushOptions, Registry, RegistryConfig};

fn client() -> Registry {
    Registry::new(RegistryConfig {
        docker_config_dir: Some("/nonexistent".into()),
        ..RegistryConfig::default()
    })
}

fn docker_id(d: &Dockerd, name: &str) -> String {
    run(d
        .docker()
        .args(["image", "inspect", "--format", "{{.Id}}", name]))
    .trim()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dockerd_interop() {
    if !(root()
        && have(&[
            "dockerd",
            "/usr/bin/docker",
            "/usr/bin/docker-registry",
            "/bin/busybox",
        ]))
    {
        return;
    }
    let reg = RegistryProc::start();
    let Some(d) = Dockerd::start(Some(&reg.host())) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"));

    // 1. moat save -> docker load: same image ID, same tag.
    let id = build_busybox(&a, "moat/busybox:1");
    let saved = tmp.path().join("moat-save.tar");
    archive::save(
        &a,
        &["moat/busybox:1"],
        std::fs::File::create(&saved).unwrap(),
    )
    .unwrap();
    let out = run(d.docker().args(["load", "-i", saved.to_str().unwrap()]));
    assert!(out.contains("moat/busybox:1"), "{out}");
    assert_eq!(docker_id(&d, "moat/busybox:1"), id.to_string());

    // 2. docker save (of that image, exported from dockerd's overlay2 store) ->
    //    moat load: same ID, and the whiteout/opaque layer survives the trip.
    let dsave = tmp.path().join("docker-save.tar");
    run(d
        .docker()
        .args(["save", "-o", dsave.to_str().unwrap(), "moat/busybox:1"]));
    let b = store(&tmp.path().join("b"));
    let loaded = archive::load(&b, std::fs::File::open(&dsave).unwrap()).unwrap();
    assert_eq!(loaded[0].id, id);
    check_busybox_layers(&b, "moat/busybox:1");

    // 3. docker import of a rootfs tarball -> docker save -> moat load.
    let rootfs = tmp.path().join("rootfs.tar");
    std::fs::write(&rootfs, &busybox_layers()[0]).unwrap();
    run(d.docker().args([
        "import",
        "-m",
        "from test",
        rootfs.to_str().unwrap(),
        "dimport:1",
    ]));
    let did = docker_id(&d, "dimport:1");
    let isave = tmp.path().join("import-save.tar");
    run(d
        .docker()
        .args(["save", "-o", isave.to_str().unwrap(), "dimport:1"]));
    let c = store(&tmp.path().join("c"));
    let l = archive::load(&c, std::fs::File::open(&isave).unwrap()).unwrap();
    assert_eq!(l[0].id.to_string(), did);
    assert_eq!(c.inspect("dimport:1").unwrap().comment, "from test");
    let dirs = c.layer_dirs("dimport:1").unwrap();
    assert!(dirs[0].join("bin/busybox").is_file());

    // 4. A multi-layer image built by dockerd's own builder (COPY needs no
    //    container), saved by dockerd, loaded by moat.
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("motd"), b"built by dockerd\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY motd /etc/motd\nENV A=1\nCMD [\"/bin/busybox\", \"sh\"]\n",
    )
    .unwrap();
    run(d.docker().env("DOCKER_BUILDKIT", "0").args([
        "build",
        "-q",
        "-t",
        "built:1",
        ctx.to_str().unwrap(),
    ]));
    let bid = docker_id(&d, "built:1");
    let bsave = tmp.path().join("built-save.tar");
    run(d
        .docker()
        .args(["save", "-o", bsave.to_str().unwrap(), "built:1"]));
    let e = store(&tmp.path().join("e"));
    let l = archive::load(&e, std::fs::File::open(&bsave).unwrap()).unwrap();
    assert_eq!(l[0].id.to_string(), bid);
    let insp = e.inspect("built:1").unwrap();
    assert_eq!(
        insp.config.cmd,
        Some(vec!["/bin/busybox".to_owned(), "sh".to_owned()])
    );
    assert!(insp.config.env.unwrap().contains(&"A=1".to_owned()));
    let dirs = e.layer_dirs("built:1").unwrap();
    assert_eq!(dirs.len(), 2);
    assert_eq!(
        std::fs::read(dirs[1].join("etc/motd")).unwrap(),
        b"built by dockerd\n"
    );
    let hist = e.history("built:1").unwrap();
    let dhist = run(d.docker().args([
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}",
        "built:1",
    ]));
    assert_eq!(hist.len(), dhist.lines().count());

    // 5. moat push -> docker pull; docker push -> moat pull.
    let name = format!("{}/interop/busybox:1", reg.host());
    a.tag("moat/busybox:1", &name).unwrap();
    client()
        .push(&a, &name, &PushOptions::default())
        .await
        .unwrap();
    run(d.docker().args(["pull", &name]));
    assert_eq!(docker_id(&d, &name), id.to_string());
    let dname = format!("{}/interop/built:1", reg.host());
    run(d.docker().args(["tag", "built:1", &dname]));
    run(d.docker().args(["push", &dname]));
    let f = store(&tmp.path().join("f"));
    let p = client()
        .pull(&f, &dname, &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(p.id.to_string(), bid);
    assert_eq!(
        std::fs::read(f.layer_dirs(&dname).unwrap()[1].join("etc/motd")).unwrap(),
        b"built by dockerd\n"
    );
    let _ = Command::new("true").status();
}
