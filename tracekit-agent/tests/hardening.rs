//! The README's systemd unit hardens the agent; these are the parts of it
//! that can be reproduced without systemd, applied to the real agent, which
//! must still do everything it is asked: `ProtectSystem=full` (/usr, /etc,
//! /boot read-only), `ProtectHome=yes` (/home, /root, /run/user empty and
//! closed), `NoNewPrivileges=yes`, and `ProtectKernelModules=yes`'s
//! capability (CAP_SYS_MODULE gone from the bounding set). eBPF, cgroups,
//! the run-as user and the node lock must all work under them.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tracekit_tests::{read_json, require_tool};

/// Applies the unit's mounts in a mount namespace of its own, then execs
/// the agent ($1) with its arguments under no_new_privs.
const HARDEN: &str = r#"set -e
for d in /usr /etc /boot /efi; do
  if [ -d "$d" ]; then mount --bind "$d" "$d"; mount -o remount,bind,ro "$d"; fi
done
for d in /home /root /run/user; do
  if [ -d "$d" ]; then mount -t tmpfs -o ro,mode=000 tmpfs "$d"; fi
done
agent="$1"; shift
exec setpriv --no-new-privs --bounding-set -sys_module "$agent" "$@"
"#;

#[test]
fn the_readme_units_hardening_leaves_the_agent_working() {
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let test = "the_readme_units_hardening_leaves_the_agent_working";
    if !(ready(test) && require_tool(test, "setpriv")) {
        return;
    }
    let mut env = Env::new(&[]);
    // Installed outside the directories the unit closes (the build may
    // live under /root).
    let installed = tempfile::tempdir_in("/run").unwrap();
    let agent_bin = installed.path().join("tracekit-agent");
    std::fs::copy(AGENT, &agent_bin).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        HARDEN,
        "sh",
    ])
    .arg(&agent_bin);
    env.agent_args(
        &mut cmd,
        "h1",
        &[
            "--capacity-units",
            "2",
            "--cpu-binding",
            "exclusive",
            "--collector",
            "ebpf",
        ],
    );
    die_with_the_test(&mut cmd);
    let mut agent = KillOnDrop(cmd.spawn().unwrap());
    env.wait("registration", Duration::from_secs(30), |e| {
        e.snapshot().nodes.iter().any(|n| n.alive)
    });
    // Its mounts are its own, and no_new_privs is set.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", agent.id())).unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(" /usr ") && l.contains(" ro,")),
        "/usr is not read-only for the agent"
    );

    let tasks: Vec<String> = (0..2).map(|_| env.task("short.mp4", 1, |_| {})).collect();
    env.submit(&tasks);
    env.wait("2 tasks done", Duration::from_secs(120), |e| {
        e.invocations("h1").len() >= 2
    });
    for inv in env.invocations("h1") {
        assert!(exit_ok(&inv), "{inv}");
        assert!(inv["cpu_ms"].as_f64().unwrap_or(0.0) > 0.0, "{inv}");
        assert!(inv.get("binding_error").is_none(), "{inv}");
    }
    let meta: Value = read_json(&env.path("logs/h1/run/node_meta.json")).unwrap();
    assert_eq!(meta["collector"], "ebpf", "{meta}");
    assert_eq!(meta["privileges_dropped"], true, "{meta}");
    assert!(meta["binding_error"].is_null(), "{meta}");
    env.assert_books_balanced();
    assert!(sigterm(&mut agent).success());
}
