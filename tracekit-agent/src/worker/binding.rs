//! CPU binding of tasks: finding the cgroups at start (or refusing to run
//! unbound), a task's group with its cpuset or weight, and the shared quotas,
//! recomputed whenever a task starts or ends and read back from each group.

use anyhow::Result;

use super::Worker;
use super::args::{Binding, WorkerArgs, binding_name};
use super::cgroup::{Cgroups, TaskGroup};
use super::command::Plan;
use super::cores::cpu_list;
use super::fairshare::{Demand, water_fill};
use super::job::{Job, group_name};

/// The cgroups of `node`, with tasks a crashed predecessor left killed; or,
/// with `--allow-unbound` and no usable hierarchy, none and why.
pub fn prepare(args: &WorkerArgs, node: &str) -> Result<(Option<Cgroups>, Option<String>)> {
    match Cgroups::detect(node) {
        Ok(cg) => {
            // Tasks of a crashed predecessor must not run on unaccounted.
            for old in cg.leftovers() {
                tracing::warn!(group = %old.name, "killing a task left by an earlier agent");
                cg.destroy(&old)?;
            }
            tracing::info!(version = %cg.version(), binding = ?args.cpu_binding, "cgroups ready");
            Ok((Some(cg), None))
        }
        Err(e) if args.allow_unbound => {
            let note = format!("CPU binding not applied (--allow-unbound): {e:#}");
            tracing::error!("{note}; every task runs UNBOUND");
            Ok((None, Some(note)))
        }
        Err(e) => Err(e.context(format!(
            "--cpu-binding {} cannot be applied on this host; give the agent a cgroup \
                 hierarchy (run it on the host, or in a network namespace only: `nsenter \
                 --net=/run/netns/NAME`, not `ip netns exec`, which remounts /sys), or pass \
                 --allow-unbound to run tasks without CPU binding",
            binding_name(args.cpu_binding)
        ))),
    }
}

impl Worker {
    /// Create the task's group and apply its binding.
    pub(super) fn bind(
        &self,
        cg: &Cgroups,
        trace_id: &str,
        plan: &Plan,
        cores: &[u32],
    ) -> Result<TaskGroup> {
        let g = cg.create(&group_name(trace_id))?;
        let set = match self.args.cpu_binding {
            Binding::Exclusive => cg.set_cpus(&g, &cpu_list(cores)),
            Binding::Shared => {
                cg.set_weight(&g, self.args.cpuweight_per_vcpu * u64::from(plan.units))
            }
        };
        if let Err(e) = set {
            let _ = cg.destroy(&g);
            return Err(e);
        }
        Ok(g)
    }

    /// Shared binding: recompute every running task's quota, and read back
    /// what each group holds then.
    pub(super) fn rebalance(&mut self) {
        let (Binding::Shared, Some(cg)) = (self.args.cpu_binding, &self.cgroups) else {
            return;
        };
        let mut jobs: Vec<&mut Job> = self
            .jobs
            .values_mut()
            .filter(|j| j.exited.is_none() && j.group.is_some())
            .collect();
        let demands: Vec<Demand> = jobs
            .iter()
            .map(|j| Demand {
                cores: f64::from(j.plan.units).min(f64::from(self.cores_total)),
                weight: f64::from(j.plan.units),
            })
            .collect();
        let grants = water_fill(f64::from(self.cores_total), &demands);
        for (job, grant) in jobs.iter_mut().zip(grants) {
            let Some(g) = &job.group else { continue };
            if let Err(e) = cg.set_quota(g, Some(grant)) {
                // The task runs on, but its record says it was not bound as
                // asked (the audit counts it).
                let why = format!("CPU quota not applied: {e:#}");
                tracing::error!(trace_id = %job.trace_id, "{why}");
                job.binding_error.get_or_insert(why);
            }
            match cg.applied(g, job.pid) {
                Ok(a) => job.applied = Some(a),
                Err(e) => {
                    tracing::warn!(trace_id = %job.trace_id, "reading back the binding: {e:#}")
                }
            }
        }
    }
}
