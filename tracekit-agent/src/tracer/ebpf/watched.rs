//! The processes the kernel samples: a dense list the agent keeps in the
//! `watched` map.

use anyhow::{Context, Result};

use aya::maps::{Array, MapData};
use tracekit_ebpf::TK_MAX_WATCHED;

/// The dense list of pids the kernel samples: slots `0..len` of the
/// `watched` array, mirrored in `pids`. Only the agent writes it; the sampler
/// reads it at every tick without a lock, so the length grows only after its
/// new slot is written, and a removal moves the last pid into the hole
/// before the length shrinks (a sample at that instant may see one pid
/// twice, and the table drops the second: same tick).
pub(super) struct Watched {
    pub(super) slots: Array<MapData, u32>,
    pub(super) len: Array<MapData, u32>,
    pub(super) pids: Vec<u32>,
    pub(super) full_warned: bool,
}

impl Watched {
    pub(super) fn add(&mut self, pid: u32) -> Result<()> {
        if self.pids.contains(&pid) {
            return Ok(());
        }
        let slot = self.pids.len() as u32;
        if slot >= TK_MAX_WATCHED {
            if !std::mem::replace(&mut self.full_warned, true) {
                anyhow::bail!("{TK_MAX_WATCHED} processes are sampled already");
            }
            return Ok(());
        }
        self.slots
            .set(slot, pid, 0)
            .context("writing a slot of the watched map")?;
        self.pids.push(pid);
        self.write_len()
    }

    pub(super) fn remove(&mut self, pid: u32) -> Result<()> {
        let Some(index) = self.pids.iter().position(|&p| p == pid) else {
            return Ok(());
        };
        let last = self.pids.len() - 1;
        if index != last {
            let moved = self.pids[last];
            self.slots
                .set(index as u32, moved, 0)
                .context("writing a slot of the watched map")?;
        }
        self.pids.swap_remove(index);
        self.write_len()
    }

    pub(super) fn write_len(&mut self) -> Result<()> {
        self.len
            .set(0, self.pids.len() as u32, 0)
            .context("writing the length of the watched map")
    }
}
