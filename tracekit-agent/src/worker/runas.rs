//! Least privilege for tasks: the agent is root (for eBPF and cgroups), the
//! ffmpeg it starts is not. Between fork and exec the child joins its
//! cgroup, drops to the `--run-as` user and its groups (which clears every
//! capability), sets no_new_privs, and asks to be killed if the agent dies.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::unistd::{User, getgrouplist};

use crate::sys::Confinement;

/// A resolved user, with the groups it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Its supplementary groups (`initgroups(3)`'s list), resolved before
    /// fork: the child must not read the group database.
    pub groups: Vec<u32>,
}

impl RunAs {
    /// Look `name` up in the user database (a number is taken as a uid with
    /// the same gid and no other group).
    pub fn lookup(name: &str) -> Result<RunAs> {
        let user = User::from_name(name)
            .with_context(|| format!("--run-as {name}: reading the user database"))?;
        match user {
            Some(u) => {
                let cname = CString::new(u.name.as_str()).context("user name contains NUL")?;
                let groups = getgrouplist(&cname, u.gid)
                    .with_context(|| format!("--run-as {name}: listing its groups"))?;
                Ok(RunAs {
                    name: name.to_string(),
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                    groups: groups.iter().map(|g| g.as_raw()).collect(),
                })
            }
            None => match name.parse::<u32>() {
                Ok(uid) => Ok(RunAs {
                    name: name.to_string(),
                    uid,
                    gid: uid,
                    groups: vec![uid],
                }),
                Err(_) => bail!("--run-as {name}: no such user"),
            },
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Open the cgroup.procs files in the parent (the child must not allocate).
pub fn open_procs_files(files: &[std::path::PathBuf]) -> Result<Vec<OwnedFd>> {
    files
        .iter()
        .map(|f| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .map(OwnedFd::from)
                .with_context(|| format!("opening {}", f.display()))
        })
        .collect()
}

/// Arrange for `cmd`'s child to join the cgroups behind `procs` and drop to
/// `user` before exec. `procs` must outlive the spawn.
pub fn confine(cmd: &mut std::process::Command, procs: &[OwnedFd], user: Option<&RunAs>) {
    let confinement = Confinement {
        procs: procs.iter().map(|f| f.as_raw_fd()).collect(),
        user: user.map(|u| (u.uid, u.gid, u.groups.clone())),
        bounding: bounding_caps(),
    };
    // SAFETY: `apply_in_child` makes only async-signal-safe system calls on
    // values prepared here, before the fork.
    unsafe {
        cmd.pre_exec(move || confinement.apply_in_child());
    }
}

/// The capabilities in this thread's bounding set (the task drops them all).
pub fn bounding_caps() -> Vec<u8> {
    caps::all()
        .into_iter()
        .filter(|c| caps::has_cap(None, caps::CapSet::Bounding, *c).unwrap_or(false))
        .map(|c| c.index())
        .collect()
}

/// Give `user` the outputs directory (and nothing else): it is created if
/// missing, owned by the user, mode 0755.
pub fn prepare_outputs(dir: &Path, user: Option<&RunAs>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(u) = user {
        std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid))
            .with_context(|| format!("giving {} to {}", dir.display(), u.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_users() {
        let root = RunAs::lookup("root").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.is_root());
        let e = RunAs::lookup("no-such-user-tracekit").expect_err("missing");
        assert!(format!("{e}").contains("no such user"));
    }

    /// The capabilities of a confined child, from its /proc status.
    fn child_caps(user: Option<&RunAs>) -> String {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status",
        ]);
        confine(&mut cmd, &[], user);
        let out = cmd.output().expect("running a confined child");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    #[test]
    fn a_task_has_no_capability_even_as_root() {
        if !tracekit_tests::require_root("a_task_has_no_capability_even_as_root") {
            return;
        }
        let nobody = RunAs::lookup("nobody").expect("nobody exists");
        for user in [None, Some(&nobody)] {
            let caps = child_caps(user);
            let lines: Vec<&str> = caps.lines().collect();
            assert_eq!(lines.len(), 5, "{caps}");
            for line in lines {
                assert!(line.ends_with("0000000000000000"), "{user:?}: {line}");
            }
        }
    }
}
