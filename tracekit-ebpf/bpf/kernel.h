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

struct list_head {
	struct list_head *next;
	struct list_head *prev;
};

struct sched_entity {
	__u64 sum_exec_runtime;
} __attribute__((preserve_access_index));

/* seqlock_t as 6.x lays it out (the lockdep-free fields). */
struct seqcount {
	unsigned int sequence;
} __attribute__((preserve_access_index));
typedef struct seqcount seqcount_t;

struct seqcount_spinlock {
	seqcount_t seqcount;
} __attribute__((preserve_access_index));
typedef struct seqcount_spinlock seqcount_spinlock_t;

typedef struct {
	seqcount_spinlock_t seqcount;
} __attribute__((preserve_access_index)) seqlock_t;

struct signal_struct {
	atomic_t live;
	/* The group's threads, linked through task_struct.thread_node. */
	struct list_head thread_head;
	/* Guards sum_sched_runtime against a thread's release moving its
	 * runtime there and off the thread list. */
	seqlock_t stats_lock;
	/* CPU time of the group's threads that were released (reaped). */
	unsigned long long sum_sched_runtime;
} __attribute__((preserve_access_index));

/* mm_struct's RSS counters (6.2+: per-CPU counters, read as statm reads
 * them, without summing the per-CPU deltas). */
struct percpu_counter {
	__s64 count;
} __attribute__((preserve_access_index));

struct mm_struct {
	struct percpu_counter rss_stat[4];
} __attribute__((preserve_access_index));

/* Before 6.2 the counters were atomics in a struct of their own. */
typedef struct {
	long counter;
} atomic_long_t;

struct mm_rss_stat {
	atomic_long_t count[4];
} __attribute__((preserve_access_index));

struct mm_struct___pre62 {
	struct mm_rss_stat rss_stat;
} __attribute__((preserve_access_index));

/* enum mm_counter_type */
#define MM_FILEPAGES 0
#define MM_ANONPAGES 1
#define MM_SHMEMPAGES 3

struct task_struct {
	unsigned int __state;
	int pid;
	int tgid;
	int exit_code;
	char comm[16];
	struct sched_entity se;
	struct task_struct *real_parent;
	struct signal_struct *signal;
	struct mm_struct *mm;
	struct list_head thread_node;
} __attribute__((preserve_access_index));

/* Kernels before 5.14 called `__state` `state` (a long). */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

struct linux_binprm {
	const char *filename;
} __attribute__((preserve_access_index));

/* The context of an iter/task program. */
struct bpf_iter_meta;
struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
} __attribute__((preserve_access_index));

#define TASK_DEAD 0x80

#endif /* TRACEKIT_KERNEL_H */
