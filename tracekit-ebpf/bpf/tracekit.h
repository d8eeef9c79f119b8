/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The kernel/user ABI of Tracekit's tracer, defined once.
 *
 * Included by the eBPF program (tracekit.bpf.c); the Rust types and
 * constants are generated from it at build time (bindgen, tracekit-ebpf's
 * build.rs), and the test `abi_matches_c` checks them against what the host
 * compiler makes of this header.
 */
#ifndef TRACEKIT_H
#define TRACEKIT_H

#include <linux/types.h>

#define TK_COMM_LEN 16
#define TK_FILENAME_LEN 128
#define TK_MAX_COMMS 64 /* entries of the `comms` filter map */
#define TK_MAX_WATCHED 16384 /* entries of the `watched` map: processes sampled */

/* Value of the `cfg_scope` global. */
#define TK_SCOPE_WORKER 0 /* the agent's descendants (the `scope` map) */
#define TK_SCOPE_HOST 1   /* every process on the host */

/* tk_event.kind */
#define TK_EV_EXEC 1 /* a process in scope called exec */
#define TK_EV_FORK 2 /* a traced process forked a child process */
#define TK_EV_EXIT 3 /* the last thread of a traced process is gone */
#define TK_EV_SAMPLES 4 /* live processes' CPU and RSS at a tick (struct tk_samples) */

/* Threads walked per process and sample; a larger group's sample is short by
 * the rest (its exit total is not) and TK_STAT_WALK_CUT counts it. */
#define TK_MAX_THREADS 512

/* tk_proc.flags */
#define TK_PROC_GROUP_DEAD 1 /* every thread called exit (exit_code set) */
#define TK_PROC_EXITED 2     /* the last thread switched out for good: cpu_ns, exit_ns final */

/* Indexes into the per-CPU `stats` array. */
#define TK_STAT_RINGBUF_LOST 0 /* ring buffer full: an event was dropped */
#define TK_STAT_PROCS_FULL 1   /* `procs` map full: a process was not traced */
#define TK_STAT_SCOPE_FULL 2   /* `scope` map full: a descendant left the scope */
#define TK_STAT_WALK_CUT 3     /* a sample walked TK_MAX_THREADS threads and stopped */
#define TK_STAT_SAMPLE_DROPPED 4 /* a sample not taken: the ring buffer was 3/4 full */
#define TK_STAT_SAMPLER_MOVED 5  /* the sampling CPU went offline: the timer runs on another */
/* The sampler's own cost, measured by itself (bpf_ktime_get_ns at entry and
 * exit): BPF's run-time statistics give only a mean, and not at all for code
 * a BPF timer runs. */
#define TK_STAT_SAMPLER_RUNS 6   /* sampler runs */
#define TK_STAT_SAMPLER_RUN_NS 7 /* their total run time, ns */
#define TK_STAT_SAMPLER_MAX_NS 8 /* the longest single run, ns (a maximum: not summed over CPUs) */
#define TK_STAT_SAMPLER_SLOW_RUNS 9 /* runs longer than TK_SLOW_RUN_NS */
#define TK_STAT_MAX 10

/* A sampler run longer than this is counted as slow. */
#define TK_SLOW_RUN_NS 100000

/* Per traced process (key: tgid), map `procs`. */
struct tk_proc {
	/* First the fields the sampler reads for every process at every
	 * tick, next to each other: fewer cache lines to fetch. */
	__u32 threads;  /* live threads */
	__u32 flags;    /* TK_PROC_* */
	/* The process's signal_struct (a kernel address), which every thread
	 * shares and exec keeps: the sampler walks its threads from there. 0
	 * until known (an adopted process gets it from the tk_adopt iterator). */
	__u64 signal;
	/* The sampler's shortcut for a process of one thread: that thread (a
	 * kernel address; 0 when not known or when it ended), its runtime at
	 * the last full reading (0: no reading to go by) and what that reading
	 * gave. While the thread's runtime stays the same, the process did not
	 * run and its CPU clock is unchanged: the sampler repeats the reading
	 * without touching the process's other structures. A thread starting
	 * or ending clears `last_rt`. */
	__u64 task;
	__u64 last_rt;
	__u64 last_cpu_ns;
	__u64 last_rss_pages;
	/* CPU time of its threads that have ended, ns, each taken from the
	 * thread's se.sum_exec_runtime at its final switch-out. It starts at
	 * the CPU of the threads that ended before tracing began, so once
	 * TK_PROC_EXITED is set it is the process's whole CPU time, as wait(2)
	 * reports it. A process adopted while running starts at minus the
	 * runtime of its threads then: its total counts from adoption. */
	__u64 cpu_ns;
	__u64 start_ns; /* exec (or fork) time, bpf_ktime_get_ns() */
	__u64 exit_ns;  /* the last thread's final switch-out, 0 while alive */
	__u32 ppid;     /* parent tgid at exec */
	__s32 exit_code; /* wait(2) status: code << 8, or signal number */
	__u32 image;      /* execs since tracing began: tells user space which image an event is about */
	__u32 _pad;
	__u64 rss_pages; /* resident pages when the last thread called exit */
};

/* One exec/fork/exit ring-buffer record. */
struct tk_event {
	__u32 kind;
	__u32 pid; /* tgid */
	__u32 ppid;
	__s32 exit_code;
	__u64 ts_ns;    /* when it happened, bpf_ktime_get_ns() */
	__u64 start_ns; /* the process's start (exec/fork) */
	__u64 cpu_ns;   /* final CPU total (TK_EV_EXIT) */
	__u64 rss_pages; /* resident pages at exit (TK_EV_EXIT), 0 if unknown */
	__u32 image;      /* tk_proc.image when emitted */
	__u32 _pad;
	__u8 comm[TK_COMM_LEN];         /* NUL-terminated */
	__u8 filename[TK_FILENAME_LEN]; /* NUL-terminated */
};

/* Processes sampled per sampler run, at most (see tk_tick). */
#define TK_SLICE 128

/* One process's reading at a tick. */
struct tk_sample {
	__u32 pid; /* tgid */
	/* File + anon + shmem pages, as statm's resident (saturated). */
	__u32 rss_pages;
	/* The process's CPU clock (thread_group_cputime: the runtime of its
	 * released threads plus that of every thread still listed), ns. */
	__u64 cpu_ns;
};

/* One ring-buffer record per sampler run: the readings of the processes it
 * sampled, all at one tick; only the first `count` entries are written
 * (the record is cut there). Its first field is that of tk_event. */
struct tk_samples {
	__u32 kind;  /* TK_EV_SAMPLES */
	__u32 count; /* entries in `samples` */
	__u64 ts_ns; /* the tick, bpf_ktime_get_ns() */
	struct tk_sample samples[TK_SLICE];
};

/* The sampler's state, map `sampler` (one entry). The sampler is a BPF
 * timer pinned to one CPU, whose callback samples a slice of the watched
 * processes per run; if that CPU goes offline, the kernel moves the timer
 * to another, which the callback notices (TK_STAT_SAMPLER_MOVED). */
struct tk_sampler {
	__u32 cpu;      /* the CPU whose timer samples */
	__u32 next;     /* the slot of `watched` the current walk goes on from */
	__u64 last_ns;  /* its last run, bpf_ktime_get_ns(); 0 before the first */
	__u64 tick_ns;  /* the current walk's tick; 0 if the timer could not start */
};

#endif /* TRACEKIT_H */
