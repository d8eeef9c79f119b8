// SPDX-License-Identifier: GPL-2.0-only
/*
 * A program that does nothing, on the tracer's hottest hook: what the hook
 * itself costs per call on this machine (the BPF dispatch, its statistics,
 * cold caches after idle). `cargo xtask bench tracer` runs it beside the
 * tracer's own `tk_switch` under the same load, so the tracer's cost can be
 * read against it. Not part of the agent.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/sched_switch")
int BPF_PROG(tk_switch_floor, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return 0;
}
