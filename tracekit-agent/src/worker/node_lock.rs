//! One agent per node id on this host: a lock file under `/run/lock`, held
//! for the agent's life (the kernel releases it when the process ends, however
//! it ends). Whoever holds it knows that no other agent of the node id runs
//! here, so what it finds under the node's cgroup was left by one that is
//! gone. Across hosts, the lease in Redis does the same job.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where the lock files live (shared by every user, sticky).
const LOCK_DIR: &str = "/run/lock";

/// The held lock (released on drop or process end).
pub struct NodeLock {
    _file: File,
    pub path: PathBuf,
}

impl NodeLock {
    /// Takes the lock of `node` on this host, or says who holds it.
    pub fn acquire(node: &str) -> Result<NodeLock> {
        Self::acquire_in(Path::new(LOCK_DIR), node)
    }

    pub fn acquire_in(dir: &Path, node: &str) -> Result<NodeLock> {
        let name = super::job::group_name(node);
        let path = dir.join(format!("tracekit-node-{name}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the node lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                bail!(
                    "node id `{node}` is in use by another agent on this host ({}; lock {}): one agent per node id",
                    if holder.trim().is_empty() {
                        "pid unknown".to_string()
                    } else {
                        holder.trim().to_string()
                    },
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        let me = format!(
            "host {} pid {}\n",
            tracekit_proto::queue::host_name(),
            std::process::id()
        );
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(me.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(NodeLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeLock::acquire_in(dir.path(), "n/1").unwrap();
        let err = NodeLock::acquire_in(dir.path(), "n/1").err().unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("in use"), "{msg}");
        drop(first);
        NodeLock::acquire_in(dir.path(), "n/1").unwrap();
    }
}
