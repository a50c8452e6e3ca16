//! The nested test host's plumbing: a command's stdout, stderr and exit status
//! come back apart and unmixed with kernel messages, added files and the
//! environment arrive, and a hung command is cut off and reported; the arm64
//! test host is an arm64 machine with a working `/dev/kvm`.

use std::time::Duration;

use moat_tests::{host_for_arch_or_skip, skip, GuestArch, HarnessError, TestHost, Tier};

fn nested_or_skip(test: &str) -> Option<TestHost> {
    let mut input = moat_tests::gather();
    input.forced = Some("nested".into());
    let p = moat_tests::probe_from(&input);
    match p.tier {
        Some(Tier::Nested) => Some(TestHost::nested()),
        _ => {
            skip(test, &p.reason);
            None
        }
    }
}

#[test]
fn stdout_stderr_status_env_and_files_come_back_separately() {
    let Some(host) = nested_or_skip("stdout_stderr_status_env_and_files_come_back_separately")
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("moat-th-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/file.txt"), "from the host\n").unwrap();
    let script = concat!(
        "cat /data/sub/file.txt; ",
        "echo \"arg=$1 env=$MOAT_TEST_VALUE\"; ",
        // Kernel messages go to the console, not to our stdout.
        "echo '<2>kernel noise' >/dev/kmsg; ",
        "echo to-stderr >&2; ",
        "test -c /dev/kvm && test -w /dev/kvm && echo kvm-ok; ",
        "grep -q cgroup2 /proc/mounts && echo cgroup2-ok; ",
        "exit 42"
    );
    let out = host
        .add(&dir, "/data")
        .env("MOAT_TEST_VALUE", "it's \"quoted\" $HOME")
        .run(&["sh", "-c", script, "sh", "two words"])
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status, 42, "stderr: {}", out.stderr_str());
    assert_eq!(
        out.stdout_str(),
        "from the host\narg=two words env=it's \"quoted\" $HOME\nkvm-ok\ncgroup2-ok\n"
    );
    assert_eq!(out.stderr_str(), "to-stderr\n");
    let console = std::fs::read_to_string(out.console_log.as_ref().unwrap()).unwrap();
    assert!(console.contains("kernel noise"), "console: {console}");
}

#[test]
fn hung_command_times_out_and_is_reported() {
    let Some(host) = nested_or_skip("hung_command_times_out_and_is_reported") else {
        return;
    };
    let start = std::time::Instant::now();
    let err = host
        .timeout(Duration::from_secs(30))
        .run(&["sleep", "3600"])
        .unwrap_err();
    assert!(matches!(err, HarnessError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn arm64_test_host_is_arm64_with_kvm() {
    let test = "arm64_test_host_is_arm64_with_kvm";
    let Some(host) = host_for_arch_or_skip(test, GuestArch::Arm64) else {
        return;
    };
    assert_eq!(host.arch(), GuestArch::Arm64);
    let out = host
        .env("MOAT_TEST_VALUE", "arm")
        .run(&[
            "sh",
            "-c",
            "uname -m; test -c /dev/kvm && test -w /dev/kvm && echo kvm-ok; \
             echo \"$MOAT_TEST_VALUE\" >&2; exit 7",
        ])
        .unwrap();
    assert_eq!(out.status, 7, "stderr: {}", out.stderr_str());
    assert_eq!(out.stdout_str(), "aarch64\nkvm-ok\n");
    assert_eq!(out.stderr_str(), "arm\n");
    let console = std::fs::read_to_string(out.console_log.as_ref().unwrap()).unwrap();
    assert!(
        console.contains("moat-testhost: ready"),
        "console: {console}"
    );
}
