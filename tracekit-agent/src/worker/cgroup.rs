//! CPU binding through cgroups, driven directly: cgroup v2 (`cpuset.cpus`,
//! `cpu.weight`, `cpu.max`) where the unified hierarchy has the cpu and
//! cpuset controllers, else v1 (`cpuset.cpus`, `cpu.shares`,
//! `cpu.cfs_quota_us`). Each task gets its own group under
//! `tracekit/<node>/`; the child process joins it before exec (see
//! [`TaskGroup::procs_files`]), so it is bound from its first instruction and,
//! unprivileged, cannot leave it or widen its mask.
//!
//! Under systemd with `Delegate=yes` (v2) the groups go inside the agent's
//! own unit group, which systemd hands over to it: the agent first moves
//! itself into a leaf (`<unit>/agent`, since a v2 group with processes
//! cannot pass controllers down), then makes `<unit>/tracekit/<node>/`.
//! Elsewhere they go under the hierarchy's root. A task's group is ended
//! with `cgroup.kill` where the kernel has it (v2), else process by process.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// CFS period used for quotas, µs: short, so a throttled task waits less
/// and small shares are delivered evenly.
pub const PERIOD_US: u64 = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// The hierarchy the agent drives and its base directories.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    /// Where the cpu hierarchy is mounted: group paths as
    /// `/proc/<pid>/cgroup` names them are relative to it.
    cpu_mount: PathBuf,
    /// v2: the group `tracekit/<node>` in the unified tree. v1: the same
    /// group in the cpu and in the cpuset hierarchy.
    cpu_base: PathBuf,
    cpuset_base: PathBuf,
}

/// A task group's binding as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The group, as `/proc/<pid>/cgroup` names it.
    pub cgroup: String,
    /// The task's process is in the group.
    pub member: bool,
    /// The CPUs it may run on (`cpuset.cpus.effective`).
    pub cpus: String,
    /// CPU weight on the v2 scale (v1 shares converted back).
    pub weight: Option<u64>,
    /// Quota and period, µs (`cpu.max`; v1 `cfs_quota_us cfs_period_us`).
    pub max: String,
}

/// One task's group.
#[derive(Debug, Clone)]
pub struct TaskGroup {
    pub name: String,
    cpu: PathBuf,
    cpuset: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// The xattr systemd sets on a group it delegated (`Delegate=yes`): from
/// then on the unit's processes own the subtree.
const DELEGATE_XATTRS: [&str; 2] = ["trusted.delegate", "user.delegate"];

/// The leaf a delegated agent moves itself into.
const AGENT_LEAF: &str = "agent";

/// This process's group in the v2 hierarchy ("/system.slice/x.service").
fn own_v2_group() -> Option<String> {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Whether systemd delegated `dir` to the processes in it.
pub fn is_delegated(dir: &Path) -> bool {
    DELEGATE_XATTRS
        .iter()
        .any(|name| matches!(xattr::get(dir, name), Ok(Some(_))))
}

/// The v2 group the agent's groups go under: its own unit's group when
/// systemd delegated it (the agent, `pid`, and whatever else runs in the
/// unit move into the leaf `agent/` first), else the hierarchy's root.
pub fn v2_parent(root: &Path, own: Option<&str>, pid: u32) -> Result<PathBuf> {
    let Some(own) = own
        .map(|o| o.trim_start_matches('/'))
        .filter(|o| !o.is_empty())
    else {
        return Ok(root.to_path_buf());
    };
    let own_dir = root.join(own);
    if own_dir.file_name() == Some(std::ffi::OsStr::new(AGENT_LEAF))
        && let Some(unit) = own_dir.parent()
        && is_delegated(unit)
    {
        // Already in the leaf (an earlier start in this unit moved it).
        return Ok(unit.to_path_buf());
    }
    if !is_delegated(&own_dir) {
        if own.ends_with(".service") {
            tracing::warn!(
                unit_group = own,
                "the agent's systemd unit has no Delegate=yes: task groups go under {}/tracekit, outside the unit (see the README's unit)",
                root.display()
            );
        }
        return Ok(root.to_path_buf());
    }
    let leaf = own_dir.join(AGENT_LEAF);
    std::fs::create_dir_all(&leaf).with_context(|| format!("creating {}", leaf.display()))?;
    // Every process of the unit (the agent among them) into the leaf: the
    // unit's group must hold none to pass controllers down.
    write(&leaf.join("cgroup.procs"), &pid.to_string())
        .context("moving the agent into its delegated group's leaf")?;
    for p in read(&own_dir.join("cgroup.procs"))?.lines() {
        let p = p.trim();
        let Err(e) = std::fs::write(leaf.join("cgroup.procs"), p) else {
            continue;
        };
        // A process that ended meanwhile is no obstacle.
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e).with_context(|| {
                format!(
                    "moving process {p} of the unit into {} (the unit's group must hold no process for its task groups)",
                    leaf.display()
                )
            });
        }
    }
    tracing::info!(group = %own_dir.display(), "cgroups inside the agent's delegated unit group");
    Ok(own_dir)
}

impl Cgroups {
    /// Find the host's hierarchy under `/sys/fs/cgroup` and create
    /// `tracekit/<node>` (v2 under systemd with `Delegate=yes`: inside the
    /// agent's unit group).
    pub fn detect(node: &str) -> Result<Cgroups> {
        Self::detect_at(Path::new("/sys/fs/cgroup"), own_v2_group().as_deref(), node)
    }

    /// As [`Cgroups::detect`] with another mount root and own group (tests
    /// use a fabricated tree).
    pub fn detect_at(root: &Path, own: Option<&str>, node: &str) -> Result<Cgroups> {
        let rel = Path::new("tracekit").join(node);
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        let cgroups = if has("cpu") && has("cpuset") {
            let parent = v2_parent(root, own, std::process::id())?;
            Cgroups {
                version: Version::V2,
                cpu_mount: root.to_path_buf(),
                cpu_base: parent.join(&rel),
                cpuset_base: parent.join(&rel),
            }
        } else if root.join("cpu/cpu.shares").exists() && root.join("cpuset/cpuset.cpus").exists() {
            Cgroups {
                version: Version::V1,
                cpu_mount: root.join("cpu"),
                cpu_base: root.join("cpu").join(&rel),
                cpuset_base: root.join("cpuset").join(&rel),
            }
        } else {
            bail!(
                "no usable cgroup hierarchy under {}: need cgroup v2 with the cpu and cpuset controllers, or v1 cpu and cpuset mounts",
                root.display()
            );
        };
        cgroups.prepare()?;
        Ok(cgroups)
    }

    /// A v2 node base `<root>/tracekit/<node>` taken as it is, without
    /// passing controllers down: for tests of the kernel's v2 mechanics on
    /// a mount that lacks the cpu and cpuset controllers.
    #[doc(hidden)]
    pub fn v2_at(root: &Path, node: &str) -> Cgroups {
        let base = root.join("tracekit").join(node);
        Cgroups {
            version: Version::V2,
            cpu_mount: root.to_path_buf(),
            cpu_base: base.clone(),
            cpuset_base: base,
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Task `name`'s group (made or not).
    pub fn group(&self, name: &str) -> TaskGroup {
        TaskGroup {
            name: name.to_string(),
            cpu: self.cpu_base.join(name),
            cpuset: self.cpuset_base.join(name),
        }
    }

    /// Create the base groups; v2 delegates the controllers down to them,
    /// v1 cpuset groups start empty and inherit their parent's CPUs.
    fn prepare(&self) -> Result<()> {
        match self.version {
            Version::V2 => {
                let tracekit = self
                    .cpu_base
                    .parent()
                    .context("the node group has a parent")?;
                let mut dir = tracekit
                    .parent()
                    .context("the tracekit group has a parent")?
                    .to_path_buf();
                for part in ["tracekit", self.node_name()] {
                    write(&dir.join("cgroup.subtree_control"), "+cpu +cpuset")?;
                    dir = dir.join(part);
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                write(&dir.join("cgroup.subtree_control"), "+cpu +cpuset")
            }
            Version::V1 => {
                for base in [&self.cpu_base, &self.cpuset_base] {
                    std::fs::create_dir_all(base)
                        .with_context(|| format!("creating {}", base.display()))?;
                }
                let parent = self
                    .cpuset_base
                    .parent()
                    .context("cpuset base has a parent")?;
                refresh_cpuset(parent)?;
                refresh_cpuset(&self.cpuset_base)
            }
        }
    }

    fn node_name(&self) -> &str {
        self.cpu_base
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("node")
    }

    /// Create (or reuse) the group of task `name`.
    pub fn create(&self, name: &str) -> Result<TaskGroup> {
        let g = self.group(name);
        for dir in [&g.cpu, &g.cpuset] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if self.version == Version::V1 {
            inherit_cpuset(&g.cpuset)?;
        }
        Ok(g)
    }

    /// Pin the group to `cpus` (cpuset list format).
    pub fn set_cpus(&self, g: &TaskGroup, cpus: &str) -> Result<()> {
        write(&g.cpuset.join("cpuset.cpus"), cpus)
    }

    /// CPU weight on systemd's scale (100 = default): v2 `cpu.weight`, v1
    /// `cpu.shares` = weight × 1024 / 100.
    pub fn set_weight(&self, g: &TaskGroup, weight: u64) -> Result<()> {
        match self.version {
            Version::V2 => write(
                &g.cpu.join("cpu.weight"),
                &weight.clamp(1, 10_000).to_string(),
            ),
            Version::V1 => write(
                &g.cpu.join("cpu.shares"),
                &(weight * 1024 / 100).max(2).to_string(),
            ),
        }
    }

    /// Cap the group at `cores` CPUs' worth of time (`None`: no cap). A
    /// burst of one period's quota lets a task make up for periods it spent
    /// waiting, so it gets its share over time, not less (kernels without
    /// burst support just lack that smoothing: reported, not fatal).
    pub fn set_quota(&self, g: &TaskGroup, cores: Option<f64>) -> Result<()> {
        let quota = cores.map(|c| ((c * PERIOD_US as f64).round() as u64).max(1000));
        let (burst_file, burst) = match self.version {
            Version::V2 => {
                let value = match quota {
                    Some(q) => format!("{q} {PERIOD_US}"),
                    None => format!("max {PERIOD_US}"),
                };
                write(&g.cpu.join("cpu.max"), &value)?;
                (g.cpu.join("cpu.max.burst"), quota.unwrap_or(0))
            }
            Version::V1 => {
                write(&g.cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                let value = quota.map(|q| q.to_string()).unwrap_or_else(|| "-1".into());
                // Burst must not exceed the quota: lower it before the quota.
                let _ = write(&g.cpu.join("cpu.cfs_burst_us"), "0");
                write(&g.cpu.join("cpu.cfs_quota_us"), &value)?;
                (g.cpu.join("cpu.cfs_burst_us"), quota.unwrap_or(0))
            }
        };
        if let Err(e) = write(&burst_file, &burst.to_string()) {
            tracing::warn!("CPU burst not applied: {e:#}");
        }
        Ok(())
    }

    /// Read back the quota, in cores (`None` = uncapped).
    #[cfg(test)]
    pub fn quota(&self, g: &TaskGroup) -> Result<Option<f64>> {
        let (q, p) = match self.version {
            Version::V2 => {
                let v = read(&g.cpu.join("cpu.max"))?;
                let mut it = v.split_whitespace();
                (
                    it.next().unwrap_or("max").to_string(),
                    it.next().unwrap_or("100000").to_string(),
                )
            }
            Version::V1 => (
                read(&g.cpu.join("cpu.cfs_quota_us"))?,
                read(&g.cpu.join("cpu.cfs_period_us"))?,
            ),
        };
        if q == "max" || q == "-1" {
            return Ok(None);
        }
        let q: f64 = q.parse().context("parsing the quota")?;
        let p: f64 = p.parse().context("parsing the period")?;
        Ok(Some(q / p))
    }

    /// What the kernel holds for the group now, read back from its files,
    /// and whether `pid` is in it (from `/proc/<pid>/cgroup`).
    pub fn applied(&self, g: &TaskGroup, pid: u32) -> Result<Applied> {
        let cpus = [
            "cpuset.cpus.effective",
            "cpuset.effective_cpus",
            "cpuset.cpus",
        ]
        .iter()
        .find_map(|f| read(&g.cpuset.join(f)).ok())
        .with_context(|| format!("reading the CPUs of {}", g.cpuset.display()))?;
        let (weight, max) = match self.version {
            Version::V2 => (
                read(&g.cpu.join("cpu.weight"))?.parse().ok(),
                read(&g.cpu.join("cpu.max"))?,
            ),
            Version::V1 => (
                read(&g.cpu.join("cpu.shares"))?
                    .parse::<u64>()
                    .ok()
                    .map(|shares| shares * 100 / 1024),
                format!(
                    "{} {}",
                    read(&g.cpu.join("cpu.cfs_quota_us"))?,
                    read(&g.cpu.join("cpu.cfs_period_us"))?
                ),
            ),
        };
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
        let wanted = self.relative(&g.cpu);
        let member = membership
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| path == wanted);
        Ok(Applied {
            cgroup: wanted,
            member,
            cpus,
            weight,
            max,
        })
    }

    /// The group's path as /proc/<pid>/cgroup names it ("/…/tracekit/…").
    fn relative(&self, dir: &Path) -> String {
        let rel = dir.strip_prefix(&self.cpu_mount).unwrap_or(dir);
        format!("/{}", rel.display())
    }

    /// The `cgroup.procs` files the child writes `0` into before exec.
    pub fn procs_files(&self, g: &TaskGroup) -> Vec<PathBuf> {
        match self.version {
            Version::V2 => vec![g.cpu.join("cgroup.procs")],
            Version::V1 => vec![g.cpu.join("cgroup.procs"), g.cpuset.join("cgroup.procs")],
        }
    }

    /// Pids in the group.
    pub fn pids(&self, g: &TaskGroup) -> Vec<i32> {
        std::fs::read_to_string(g.cpu.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILL everything in the group, then remove it.
    pub fn destroy(&self, g: &TaskGroup) -> Result<()> {
        // One write ends the whole group, forks racing it included.
        let kill = g.cpu.join("cgroup.kill");
        if self.version == Version::V2
            && kill.exists()
            && !self.pids(g).is_empty()
            && let Err(e) = write(&kill, "1")
        {
            tracing::warn!("{e:#}: killing the group's processes one by one");
        }
        for _ in 0..50 {
            let pids = self.pids(g);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // Gone already is as good as killed.
                let _ = crate::sys::kill_now(pid);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for dir in [&g.cpu, &g.cpuset] {
            if dir.exists() {
                // cgroupfs removes its own control files with the directory;
                // a fabricated tree (tests) holds plain files.
                if std::fs::remove_dir(dir).is_err() {
                    std::fs::remove_dir_all(dir)
                        .with_context(|| format!("removing {}", dir.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Remove this node's base groups at a clean stop, if no task group is
    /// left in them (cgroupfs refuses to remove a group that has children).
    /// `tracekit/` itself is shared with the host's other agents: it stays.
    pub fn remove_base(&self) {
        for dir in [&self.cpu_base, &self.cpuset_base] {
            if let Err(e) = std::fs::remove_dir(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::debug!("keeping {}: {e}", dir.display());
            }
        }
    }

    /// Task groups left by an earlier run of this node's agent (after a
    /// crash): their processes must not run on unaccounted.
    pub fn leftovers(&self) -> Vec<TaskGroup> {
        let Ok(dir) = std::fs::read_dir(&self.cpu_base) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| Some(self.group(e.file_name().to_str()?)))
            .collect()
    }
}

/// v1 cpuset groups start with no CPUs or memory nodes: copy the parent's.
fn inherit_cpuset(dir: &Path) -> Result<()> {
    let parent = dir.parent().context("cpuset group has a parent")?;
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let cur = read(&dir.join(f)).unwrap_or_default();
        if cur.is_empty() {
            let v = read(&parent.join(f))?;
            write(&dir.join(f), &v)?;
        }
    }
    Ok(())
}

/// v1 base groups get their parent's CPUs and memory nodes again: v1 takes
/// a CPU out of every cpuset when it goes offline and does not give it back
/// when it returns, so groups made before a hotplug would stay narrowed.
fn refresh_cpuset(dir: &Path) -> Result<()> {
    let parent = dir.parent().context("cpuset group has a parent")?;
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let want = read(&parent.join(f))?;
        let have = read(&dir.join(f)).unwrap_or_default();
        if have != want
            && let Err(e) = write(&dir.join(f), &want)
        {
            // Narrowing fails while a child holds the CPUs: keep what is there.
            if have.is_empty() {
                return Err(e);
            }
            tracing::warn!("{e:#}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fabricated cgroup v2 tree: plain files stand in for cgroupfs.
    #[test]
    fn drives_a_v2_tree() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("write");
        let cg = Cgroups::detect_at(root.path(), None, "n1").expect("v2 detected");
        assert_eq!(cg.version(), Version::V2);
        assert_eq!(
            std::fs::read_to_string(root.path().join("tracekit/cgroup.subtree_control"))
                .expect("delegated"),
            "+cpu +cpuset"
        );
        let g = cg.create("t1").expect("group");
        cg.set_cpus(&g, "0-1").expect("cpus");
        cg.set_weight(&g, 200).expect("weight");
        cg.set_quota(&g, Some(1.5)).expect("quota");
        let dir = root.path().join("tracekit/n1/t1");
        assert_eq!(
            std::fs::read_to_string(dir.join("cpuset.cpus")).expect("r"),
            "0-1"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.weight")).expect("r"),
            "200"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).expect("r"),
            "30000 20000"
        );
        assert_eq!(cg.quota(&g).expect("read back"), Some(1.5));
        cg.set_quota(&g, None).expect("uncapped");
        assert_eq!(cg.quota(&g).expect("read back"), None);
        assert_eq!(cg.procs_files(&g), vec![dir.join("cgroup.procs")]);
        assert_eq!(cg.leftovers().len(), 1);
        cg.destroy(&g).expect("removed");
        assert!(!dir.exists());
    }

    #[test]
    fn no_hierarchy_is_a_clear_error() {
        let root = tempfile::tempdir().expect("tempdir");
        let e = Cgroups::detect_at(root.path(), None, "n1").expect_err("nothing there");
        assert!(format!("{e:#}").contains("no usable cgroup hierarchy"));
    }
}
