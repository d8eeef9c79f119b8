/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The few kernel types the tracer reads, declared with CO-RE relocations
 * (preserve_access_index): libbpf/aya match them by name against the running
 * kernel's BTF, so offsets adapt to any kernel; only the fields used are listed.
 */
#ifndef TRACEKIT_KERNEL_H
#define TRACEKIT_KERNEL_H

#include <linux/types.h>
#include <linux/bpf.h>

typedef _Bool bool;

typedef struct {
	int counter;
} atomic_t;

struct sched_entity {
	__u64 sum_exec_runtime;
} __attribute__((preserve_access_index));

struct signal_struct {
	atomic_t live;
	/* CPU time of the group's threads that were released (reaped). */
	unsigned long long sum_sched_runtime;
} __attribute__((preserve_access_index));

struct task_struct {
	unsigned int __state;
	int pid;
	int tgid;
	int exit_code;
	char comm[16];
	struct sched_entity se;
	struct task_struct *real_parent;
	struct signal_struct *signal;
} __attribute__((preserve_access_index));

/* Kernels before 5.14 called `__state` `state` (a long). */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

struct linux_binprm {
	const char *filename;
} __attribute__((preserve_access_index));

#define TASK_DEAD 0x80

#endif /* TRACEKIT_KERNEL_H */
