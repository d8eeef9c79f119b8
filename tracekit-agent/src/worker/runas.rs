//! Least privilege for tasks: the agent is root (for eBPF and cgroups), the
//! ffmpeg it starts is not. Between fork and exec the child joins its
//! cgroup, drops to the `--run-as` user and its groups (which clears every
//! capability), sets no_new_privs, and asks to be killed if the agent dies.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Look `name` up in the user database (a number is taken as a uid).
    pub fn lookup(name: &str) -> Result<RunAs> {
        let cname = CString::new(name).context("user name contains NUL")?;
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0u8; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwnam_r fills `pwd` using `buf`, both ours and sized.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == 0 && !result.is_null() {
            return Ok(RunAs {
                name: name.to_string(),
                uid: pwd.pw_uid,
                gid: pwd.pw_gid,
            });
        }
        if let Ok(uid) = name.parse::<u32>() {
            return Ok(RunAs {
                name: name.to_string(),
                uid,
                gid: uid,
            });
        }
        bail!("--run-as {name}: no such user")
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
    let fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    let user = user.cloned();
    // SAFETY: the closure only makes async-signal-safe system calls on
    // values prepared before fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            // "0" moves the writing process into the group.
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return fail();
                }
            }
            if let Some(u) = &user {
                let groups = [u.gid];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setresgid(u.gid, u.gid, u.gid) != 0
                    || libc::setresuid(u.uid, u.uid, u.uid) != 0
                {
                    return fail();
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail();
            }
            // After the uid change, which clears it: if the agent dies, so
            // does the task (a restarted agent also kills leftovers).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return fail();
            }
            if libc::getppid() == 1 {
                libc::_exit(137);
            }
            Ok(())
        });
    }
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
}
