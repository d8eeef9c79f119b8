//! The agent's cgroup v2 mechanics on the real kernel, on a cgroup2 mount
//! of this test's own (whatever the host uses): a group systemd delegated
//! (`Delegate=yes`, marked by its `trusted.delegate` xattr) is where the
//! agent's groups go, after the agent moves itself into a leaf; an
//! undelegated one is not used; `cgroup.kill` ends a task group whole.
//! The cpu and cpuset controllers are not needed for these (on a v1 host
//! they stay with v1).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tracekit_agent::worker::cgroup::{is_delegated, v2_parent};
use tracekit_tests::require_root;

/// A cgroup2 mount in a temp dir, and the groups made under it, removed
/// (processes moved back to the root first) and unmounted on drop.
struct Mount {
    dir: tempfile::TempDir,
    made: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Mount {
    fn new() -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting cgroup2: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount {
            dir,
            made: Vec::new(),
            children: Vec::new(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn group(&mut self, rel: &str) -> PathBuf {
        let g = self.root().join(rel);
        std::fs::create_dir_all(&g).unwrap();
        self.made.push(g.clone());
        g
    }

    fn sleeper(&mut self) -> u32 {
        let c = Command::new("sleep").arg("600").spawn().unwrap();
        let pid = c.id();
        self.children.push(c);
        pid
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let root_procs = self.root().join("cgroup.procs");
        let mut groups: Vec<PathBuf> = Vec::new();
        for g in &self.made {
            let mut d = g.clone();
            while d.starts_with(self.root()) && d != self.root() {
                groups.push(d.clone());
                d = d.parent().unwrap().to_path_buf();
            }
        }
        groups.sort();
        groups.dedup();
        // Deepest first.
        groups.sort_by_key(|g| std::cmp::Reverse(g.components().count()));
        for g in &groups {
            for pid in std::fs::read_to_string(g.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                let _ = std::fs::write(&root_procs, pid);
            }
        }
        for g in &groups {
            let _ = std::fs::remove_dir(g);
        }
        let _ = Command::new("umount").arg(self.root()).status();
    }
}

fn v2_group_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .unwrap()
}

fn procs(g: &Path) -> Vec<String> {
    std::fs::read_to_string(g.join("cgroup.procs"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_delegated_unit_group_takes_the_agents_groups_after_the_agent_moves_to_a_leaf() {
    if !require_root("a_delegated_unit_group_takes_the_agents_groups…") {
        return;
    }
    let mut m = Mount::new();
    let unit = m.group("tk-test.slice/tk-agent.service");
    // Stands in for the agent, and a helper of its unit.
    let agent = m.sleeper();
    let helper = m.sleeper();
    for pid in [agent, helper] {
        std::fs::write(unit.join("cgroup.procs"), pid.to_string()).unwrap();
    }
    let own = "/tk-test.slice/tk-agent.service";

    // Without Delegate=yes the unit's group is systemd's: not used.
    assert!(!is_delegated(&unit));
    assert_eq!(v2_parent(m.root(), Some(own), agent).unwrap(), m.root());
    assert_eq!(v2_group_of(agent), own);

    xattr::set(&unit, "trusted.delegate", b"1").unwrap();
    assert!(is_delegated(&unit));
    assert_eq!(v2_parent(m.root(), Some(own), agent).unwrap(), unit);
    m.made.push(unit.join("agent"));
    // The unit's group holds no process now, so it can pass controllers
    // down to the groups the agent makes beside its leaf.
    assert!(procs(&unit).is_empty(), "{:?}", procs(&unit));
    assert_eq!(v2_group_of(agent), format!("{own}/agent"));
    assert_eq!(v2_group_of(helper), format!("{own}/agent"));
    // Started again in the same unit: the same place.
    assert_eq!(v2_parent(m.root(), Some(own), agent).unwrap(), unit);
    // Not under systemd at all: the root, as before.
    assert_eq!(v2_parent(m.root(), Some("/"), agent).unwrap(), m.root());
}

#[test]
fn cgroup_kill_ends_a_task_group_whole() {
    if !require_root("cgroup_kill_ends_a_task_group_whole") {
        return;
    }
    let mut m = Mount::new();
    let g = m.group("tracekit/n1/t1");
    assert!(
        g.join("cgroup.kill").exists(),
        "this kernel has no cgroup.kill"
    );
    let pids: Vec<u32> = (0..3).map(|_| m.sleeper()).collect();
    for pid in &pids {
        std::fs::write(g.join("cgroup.procs"), pid.to_string()).unwrap();
    }
    assert_eq!(procs(&g).len(), 3);
    let cg = tracekit_agent::worker::cgroup::Cgroups::v2_at(m.root(), "n1");
    let group = cg.group("t1");
    cg.destroy(&group).unwrap();
    assert!(!g.exists(), "the group was not removed");
    let start = Instant::now();
    for c in &mut m.children {
        let status = c.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status}"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    // At a clean stop the node's base groups go too.
    cg.remove_base();
    assert!(!m.root().join("tracekit/n1").exists());
}
