// SPDX-License-Identifier: GPL-2.0-only
/*
 * Tracekit's kernel side: follows exec, fork and exit of the processes in
 * scope, and takes each traced thread's CPU time from the kernel's own
 * runtime accounting (task->se.sum_exec_runtime) at its final switch-out,
 * summed per process in the `procs` map. Nothing per switch reaches user
 * space, and a switch that is not a thread's last costs one load and a
 * compare: looking up every switching thread in a map costs several cold
 * cache lines on a VM whose CPUs idle between switches (figures in
 * docs/benchmarks.md).
 *
 * Samples are taken here too: a BPF timer (tk_tick) walks the traced
 * processes every interval, a bounded slice per run, and writes the live
 * ones' CPU clocks and RSS to the ring buffer, one record per run, without
 * waking user space, which drains them every few seconds. On a VM, waking a process costs CPU whatever it then does; this way the agent wakes every few seconds, not every interval.
 * Every lost event or full map is counted in `stats`.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "tracekit.h"

char LICENSE[] SEC("license") = "GPL";

/* The ring buffer's size (max_entries of `events`): room for the samples
 * of a few thousand processes between two drains of user space. */
#define TK_RING_BYTES (1 << 21)

/* Set by the loader before load (TK_SCOPE_*). */
const volatile __u32 cfg_scope = TK_SCOPE_WORKER;
/* When set, only an exec whose comm is a key of `comms` starts tracing:
 * the match is a set of exact names, so other execs never reach user space. */
const volatile __u32 cfg_comm_filter = 0;
/* The sampling interval, ns. */
const volatile __u64 cfg_interval_ns = 1000000000;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TK_MAX_COMMS);
	__type(key, char[TK_COMM_LEN]);
	__type(value, __u8);
} comms SEC(".maps");

/* Processes whose descendants are in scope (worker scope): the agent's tgid,
 * put there by the agent, and every process forked below it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} scope SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct tk_proc);
} procs SEC(".maps");

/* The processes user space traces, which the sampler samples: a dense list
 * (the first `watched_len[0]` slots), kept by user space. Walking the
 * `procs` hash itself would visit all its buckets every tick. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TK_MAX_WATCHED);
	__type(key, __u32);
	__type(value, __u32);
} watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} watched_len SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tk_sampler);
} sampler SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, TK_RING_BYTES);
} events SEC(".maps");

/* The record a sampler run fills, copied to the ring buffer once at the
 * end of the run (only the entries written). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tk_samples);
} batch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TK_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count_n(__u32 stat, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &stat);
	if (v)
		*v += n; /* per-CPU slot: no atomic needed */
}

static __always_inline void count(__u32 stat)
{
	count_n(stat, 1);
}

/* Account one sampler run that began at `start` (bpf_ktime_get_ns). */
static __always_inline void note_run(__u64 start)
{
	__u32 k = TK_STAT_SAMPLER_RUNS;
	__u64 ns = bpf_ktime_get_ns() - start;
	__u64 *v = bpf_map_lookup_elem(&stats, &k);
	if (v)
		*v += 1;
	k = TK_STAT_SAMPLER_RUN_NS;
	v = bpf_map_lookup_elem(&stats, &k);
	if (v)
		*v += ns;
	k = TK_STAT_SAMPLER_MAX_NS;
	v = bpf_map_lookup_elem(&stats, &k);
	if (v && ns > *v)
		*v = ns;
	if (ns > TK_SLOW_RUN_NS)
		count(TK_STAT_SAMPLER_SLOW_RUNS);
}

/* tp_btf arguments are trusted kernel pointers: fields are read directly,
 * without a probe-read helper call, on the hot path. */
static __always_inline unsigned long task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return t->__state;
	return ((struct task_struct___pre514 *)t)->state;
}

static __always_inline void emit(__u32 kind, __u32 tgid, struct tk_proc *p,
				 struct task_struct *task, const char *filename)
{
	struct tk_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(TK_STAT_RINGBUF_LOST);
		return;
	}
	e->kind = kind;
	e->pid = tgid;
	e->ppid = p->ppid;
	e->exit_code = p->exit_code;
	e->ts_ns = kind == TK_EV_EXIT ? p->exit_ns : bpf_ktime_get_ns();
	e->start_ns = p->start_ns;
	e->cpu_ns = p->cpu_ns;
	e->rss_pages = p->rss_pages;
	e->image = p->image;
	e->_pad = 0;
	BPF_CORE_READ_STR_INTO(&e->comm, task, comm);
	if (filename)
		bpf_probe_read_kernel_str(&e->filename, sizeof(e->filename), filename);
	else
		e->filename[0] = 0;
	/* Sample records wait unannounced in the ring, so the default
	 * notification (only when user space has read everything) would not
	 * fire: these events are few, and the worker waits on exits. */
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

/* Resident pages of `mm`, as /proc/PID/statm counts them. */
static __always_inline __u64 rss_pages(struct mm_struct *mm)
{
	__s64 file, anon, shmem;

	if (!mm)
		return 0;
	if (bpf_core_type_exists(struct mm_rss_stat)) {
		struct mm_struct___pre62 *old = (void *)mm;
		file = BPF_CORE_READ(old, rss_stat.count[MM_FILEPAGES].counter);
		anon = BPF_CORE_READ(old, rss_stat.count[MM_ANONPAGES].counter);
		shmem = BPF_CORE_READ(old, rss_stat.count[MM_SHMEMPAGES].counter);
	} else {
		file = BPF_CORE_READ(mm, rss_stat[MM_FILEPAGES].count);
		anon = BPF_CORE_READ(mm, rss_stat[MM_ANONPAGES].count);
		shmem = BPF_CORE_READ(mm, rss_stat[MM_SHMEMPAGES].count);
	}
	/* Per-CPU deltas not yet folded in can leave a counter below zero. */
	return (file > 0 ? file : 0) + (anon > 0 ? anon : 0) + (shmem > 0 ? shmem : 0);
}

/* Start tracing process `tgid`, whose only thread is `task`. Its threads
 * that ended before (an exec ends all others) count from the kernel's own
 * sum, so the total is the process's whole CPU time, as rusage has it. */
static __always_inline struct tk_proc *track(__u32 tgid, struct task_struct *task, __u32 ppid)
{
	struct tk_proc fresh = {
		.cpu_ns = BPF_CORE_READ(task, signal, sum_sched_runtime),
		.start_ns = bpf_ktime_get_ns(),
		.threads = 1,
		.ppid = ppid,
		.signal = (__u64)BPF_CORE_READ(task, signal),
		.task = (__u64)task,
	};

	long err = bpf_map_update_elem(&procs, &tgid, &fresh, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST: raced with another CPU, keep it */) {
		count(TK_STAT_PROCS_FULL);
		return 0;
	}
	return bpf_map_lookup_elem(&procs, &tgid);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tk_exec, struct task_struct *task, int old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);

	if (cfg_scope == TK_SCOPE_WORKER && !bpf_map_lookup_elem(&scope, &tgid))
		return 0;
	struct tk_proc *p = bpf_map_lookup_elem(&procs, &tgid);
	if (p) {
		/* Traced already (forked by a traced process, or exec'd before):
		 * a new image. User space decides on it by this number. Exec
		 * leaves one thread, which may not be the one known before. */
		__sync_fetch_and_add(&p->image, 1);
		p->task = (__u64)task;
		p->last_rt = 0;
	} else {
		if (cfg_comm_filter) {
			char comm[TK_COMM_LEN] = {};
			bpf_get_current_comm(comm, sizeof(comm));
			if (!bpf_map_lookup_elem(&comms, comm))
				return 0;
		}
		__u32 ppid = BPF_CORE_READ(task, real_parent, tgid);
		p = track(tgid, task, ppid);
		if (!p)
			return 0;
	}
	emit(TK_EV_EXEC, tgid, p, task, BPF_CORE_READ(bprm, filename));
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(tk_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	struct tk_proc *p;

	if (ctgid == ptgid) {
		/* A new thread: count it if its process is traced. */
		p = bpf_map_lookup_elem(&procs, &ptgid);
		if (p) {
			__sync_fetch_and_add(&p->threads, 1);
			p->last_rt = 0;
		}
		return 0;
	}

	/* A new process. Worker scope follows descendants before the child's
	 * first instruction: this hook runs before it is woken up. */
	if (cfg_scope == TK_SCOPE_WORKER && bpf_map_lookup_elem(&scope, &ptgid)) {
		__u8 one = 1;
		if (bpf_map_update_elem(&scope, &ctgid, &one, BPF_ANY))
			count(TK_STAT_SCOPE_FULL);
	}
	if (!bpf_map_lookup_elem(&procs, &ptgid))
		return 0;
	/* A traced process's child is traced too (it may never exec). */
	p = track(ctgid, child, ptgid);
	if (p)
		emit(TK_EV_FORK, ctgid, p, child, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tk_exit, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);

	/* signal->live drops to 0 when the group's last thread exits; read it
	 * rather than the tracepoint's group_dead argument, which older kernels
	 * lack. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (cfg_scope == TK_SCOPE_WORKER)
		bpf_map_delete_elem(&scope, &tgid);
	struct tk_proc *p = bpf_map_lookup_elem(&procs, &tgid);
	if (!p)
		return 0;
	p->exit_code = BPF_CORE_READ(task, exit_code);
	/* The tracepoint comes before exit_mm() on 6.16+; earlier, mm is gone
	 * and the last sample's RSS stands. */
	p->rss_pages = rss_pages(BPF_CORE_READ(task, mm));
	__sync_fetch_and_or(&p->flags, TK_PROC_GROUP_DEAD);
	return 0;
}

/* The hot path, run at every context switch on the host: only a thread's
 * final switch-out goes past the first test. */
SEC("tp_btf/sched_switch")
int BPF_PROG(tk_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	if (!(task_state(prev) & TASK_DEAD))
		return 0;

	__u32 tgid = prev->tgid;
	struct tk_proc *p = bpf_map_lookup_elem(&procs, &tgid);
	if (!p)
		return 0;
	/* update_curr() ran for prev before this tracepoint and prev never runs
	 * again: its runtime is final to the nanosecond. */
	__sync_fetch_and_add(&p->cpu_ns, prev->se.sum_exec_runtime);
	/* Before its task_struct can be freed (an RCU grace period after
	 * this switch): the sampler reads it only while it is listed here. */
	p->last_rt = 0;
	if (p->task == (__u64)prev)
		p->task = 0;
	if (__sync_fetch_and_add(&p->threads, -1) != 1)
		return 0;
	/* The process ends here, not at the exit tracepoint: tearing down its
	 * memory and files comes between the two and takes milliseconds. */
	p->exit_ns = bpf_ktime_get_ns();
	__sync_fetch_and_or(&p->flags, TK_PROC_EXITED);
	emit(TK_EV_EXIT, tgid, p, prev, 0);
	return 0;
}

/* What a full reading found besides the CPU clock. */
struct walk {
	struct mm_struct *mm; /* a live thread's mm */
	__u64 last;           /* the last listed thread */
	__u64 last_rt;        /* its runtime */
	__u64 first;          /* the first listed thread: the only one if last */
};

/* The process's CPU clock as the kernel computes it (thread_group_cputime):
 * runtime of the released threads plus that of every listed thread, read
 * again if a thread's release (which moves its runtime from one to the
 * other under stats_lock) overlapped. */
static __always_inline __u64 group_runtime(struct signal_struct *sig, struct walk *w)
{
	struct list_head *head = __builtin_preserve_access_index(&sig->thread_head);
	__u64 off = bpf_core_field_offset(struct task_struct, thread_node);
	__u64 sum = 0;
	int cut = 0;

	for (int attempt = 0; attempt < 2; attempt++) {
		unsigned int seq = BPF_CORE_READ(sig, stats_lock.seqcount.seqcount.sequence);
		struct list_head *node = BPF_CORE_READ(sig, thread_head.next);
		int i;

		/* Not the count of threads walked: a value derived from `i`
		 * that is tested later makes the verifier follow every
		 * iteration of the loop. */
		w->first = (__u64)node - off;
		sum = BPF_CORE_READ(sig, sum_sched_runtime);
		for (i = 0; i < TK_MAX_THREADS && node != head; i++) {
			struct task_struct *t = (void *)node - off;
			__u64 rt = BPF_CORE_READ(t, se.sum_exec_runtime);
			sum += rt;
			/* Unconditional, so the verifier has no branch to follow:
			 * with one thread, the last is the only one. */
			w->last = (__u64)t;
			w->last_rt = rt;
			if (!w->mm)
				w->mm = BPF_CORE_READ(t, mm);
			node = BPF_CORE_READ(t, thread_node.next);
		}
		cut = node != head;
		if (!(seq & 1) && seq == BPF_CORE_READ(sig, stats_lock.seqcount.seqcount.sequence))
			break;
	}
	if (cut)
		count(TK_STAT_WALK_CUT);
	return sum;
}

struct sample_ctx {
	__u64 start;  /* the run's start, bpf_ktime_get_ns() */
	__u32 base;   /* the slice's first slot */
	__u32 walked; /* slots walked so far */
};

/* A run stops taking processes after this long, ns, and leaves the rest of
 * its slice to the next run: it must stay short whatever each process
 * costs (a thread walk per process, cold caches). The first pass of a run
 * stops after half of it. */
#define TK_RUN_BUDGET_NS 40000

/* A process of the slice, as the first pass of a run found it. */
struct pending {
	__u32 pid;
	__u32 slot;
	__u64 task;    /* its one thread if the shortcut may apply, else 0 */
	__u64 last_rt; /* the shortcut's reading (see tk_proc) */
	__u64 last_cpu_ns;
	__u64 last_rss_pages;
};

/* The processes a run's first pass found (per CPU: only the sampling CPU's
 * timer uses it). */
struct pending_list {
	__u32 count;
	__u32 _pad;
	struct pending items[TK_SLICE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pending_list);
} pending SEC(".maps");

/* The record of traced process `pid` if the sampler may read it: alive,
 * its signal_struct known. The signal_struct is freed after the process is
 * reaped, which only comes after all its threads called exit
 * (TK_PROC_GROUP_DEAD, set by tk_exit: no thread count involved), and a
 * grace period after: the sampler runs in softirq, an RCU read section, so
 * what it reads stays valid if the flag was clear when it looked. The exit
 * record has the rest. `task` likewise: tk_switch clears it before the
 * thread's task_struct can be freed. */
static __always_inline struct tk_proc *live_proc(__u32 pid)
{
	struct tk_proc *p = bpf_map_lookup_elem(&procs, &pid);

	if (!p || !p->signal || (p->flags & (TK_PROC_GROUP_DEAD | TK_PROC_EXITED)))
		return 0;
	return p;
}

/* Whether the run has used `budget` ns; the clock is read every 16
 * processes only, since each read costs too. */
static __always_inline int over_budget(__u32 i, struct sample_ctx *ctx, __u64 budget)
{
	return i && !(i & 15) && bpf_ktime_get_ns() - ctx->start > budget;
}

/* First pass, slot `base + i` of `watched`: note the live process there
 * and what the shortcut needs. The two passes let the CPU fetch the cold
 * cache lines of several processes at once: each pass's reads do not
 * depend on one another from process to process, where one walk chained
 * them all. */
static long find_one(__u32 i, struct sample_ctx *ctx)
{
	__u32 zero = 0;
	__u32 slot = ctx->base + i;

	if (over_budget(i, ctx, TK_RUN_BUDGET_NS / 2))
		return 1;
	struct pending_list *l = bpf_map_lookup_elem(&pending, &zero);
	if (!l || l->count >= TK_SLICE)
		return 1;
	ctx->walked = i + 1;
	__u32 *pid = bpf_map_lookup_elem(&watched, &slot);
	if (!pid || !*pid)
		return 0;
	struct tk_proc *p = live_proc(*pid);
	if (!p)
		return 0;
	__u32 n = l->count;
	if (n >= TK_SLICE)
		return 1;
	struct pending *e = &l->items[n];
	e->pid = *pid;
	e->slot = slot;
	e->last_rt = p->last_rt;
	e->task = e->last_rt && p->threads == 1 ? p->task : 0;
	e->last_cpu_ns = p->last_cpu_ns;
	e->last_rss_pages = p->last_rss_pages;
	l->count = n + 1;
	return 0;
}

/* A full reading of process `pid` into `e`: its CPU clock from all its
 * threads, its RSS from its mm; the shortcut's reading is kept if it has
 * one thread. False if the process ended meanwhile. */
static __always_inline int read_fully(__u32 pid, struct tk_sample *e)
{
	struct tk_proc *p = live_proc(pid);
	if (!p)
		return 0;
	__u64 task = p->task;
	struct walk w = {};
	__u64 cpu = group_runtime((struct signal_struct *)p->signal, &w);
	__u64 rss = rss_pages(w.mm);
	e->cpu_ns = cpu;
	e->rss_pages = rss > 0xffffffffULL ? 0xffffffffU : rss;
	if (w.first == w.last && w.last == task && p->threads == 1) {
		p->last_cpu_ns = cpu;
		p->last_rss_pages = e->rss_pages;
		p->last_rt = w.last_rt;
	} else {
		p->last_rt = 0;
	}
	return 1;
}

/* Second pass: sample the `i`th process the first pass found into the
 * run's record. */
static long take_one(__u32 i, struct sample_ctx *ctx)
{
	__u32 zero = 0;
	struct pending_list *l = bpf_map_lookup_elem(&pending, &zero);
	struct tk_samples *b = bpf_map_lookup_elem(&batch, &zero);
	if (!l || !b || i >= TK_SLICE)
		return 1;
	struct pending *p = &l->items[i];
	if (over_budget(i, ctx, TK_RUN_BUDGET_NS)) {
		/* The rest of the slice is the next run's. */
		ctx->walked = p->slot - ctx->base;
		return 1;
	}
	__u32 n = b->count;
	if (n >= TK_SLICE)
		return 1;
	struct tk_sample *e = &b->samples[n];
	e->pid = p->pid;
	/* One thread that has not run since the last full reading: the
	 * process's clock has not moved, and neither has its memory but for
	 * reclaim, which the next reading after it runs shows. Only that
	 * thread's runtime is read (one cache line, where a full reading
	 * touches the process's signal_struct, each thread and its mm). */
	struct task_struct *task = (void *)p->task;
	if (task && BPF_CORE_READ(task, se.sum_exec_runtime) == p->last_rt) {
		e->cpu_ns = p->last_cpu_ns;
		e->rss_pages = p->last_rss_pages;
	} else if (!read_fully(p->pid, e)) {
		return 0; /* it ended since the first pass */
	}
	b->count = n + 1;
	return 0;
}

/* The sampler's timer: a BPF timer (an hrtimer whose callback runs in
 * softirq, interrupts enabled), pinned to the sampling CPU. The kernel
 * moves a pinned hrtimer to another CPU when its CPU goes offline. */
struct tk_ticker {
	struct bpf_timer timer;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tk_ticker);
} ticker SEC(".maps");

/* bpf_timer_start flags (Linux 6.7+), absent from older UAPI headers. */
#define TK_TIMER_ABS 1     /* BPF_F_TIMER_ABS: nsecs is an absolute time */
#define TK_TIMER_CPU_PIN 2 /* BPF_F_TIMER_CPU_PIN: stay on this CPU */
#define TK_CLOCK_MONOTONIC 1 /* bpf_ktime_get_ns()'s clock */

/* One run must stay short whatever the number of traced processes, so a
 * tick's walk is cut into slices of at most TK_SLICE processes (or what
 * TK_RUN_BUDGET_NS allows), each its own run. */
/* The pause between two slices of one walk, ns: the CPU goes back to its
 * tasks in between. */
#define TK_SLICE_GAP_NS 100000

/* Hand the run's record to user space: the entries written, in one copy. */
static __always_inline void emit_samples(struct tk_samples *b)
{
	__u32 n = b->count;

	if (n == 0)
		return;
	if (n > TK_SLICE)
		n = TK_SLICE;
	/* Samples must never crowd exec and exit events out of the ring. */
	__u64 queued = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (queued > TK_RING_BYTES / 4 * 3) {
		count_n(TK_STAT_SAMPLE_DROPPED, n);
		return;
	}
	/* Wake user space only once the ring is half full: it drains on its
	 * own every few seconds. */
	__u64 size = sizeof(*b) - sizeof(b->samples) + n * sizeof(b->samples[0]);
	if (bpf_ringbuf_output(&events, b, size,
			       queued > TK_RING_BYTES / 2 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP))
		count_n(TK_STAT_SAMPLE_DROPPED, n);
}

/* One run of the sampler: the next slice of the current tick's walk over
 * `watched`, then the timer is set for the slice after it or, once the walk
 * is done, for the next tick. Each process keeps its place in the walk, so
 * its samples are one interval apart; the CPU of an interval is the
 * difference of two readings of the process's CPU clock, exact whatever
 * the moment of each. */
static int tk_tick(void *map, __u32 *key, struct tk_ticker *t)
{
	__u64 start = bpf_ktime_get_ns();
	__u32 zero = 0;
	struct tk_sampler *s = bpf_map_lookup_elem(&sampler, &zero);
	if (!s)
		return 0;
	__u32 cpu = bpf_get_smp_processor_id();
	if (cpu != s->cpu) {
		/* Its CPU went offline, and the kernel moved the timer here. */
		s->cpu = cpu;
		count(TK_STAT_SAMPLER_MOVED);
	}
	s->last_ns = start;

	__u32 *len = bpf_map_lookup_elem(&watched_len, &zero);
	__u32 n = len ? *len : 0;
	if (n > TK_MAX_WATCHED)
		n = TK_MAX_WATCHED;
	__u32 from = s->next < n ? s->next : n;
	__u32 to = n - from > TK_SLICE ? from + TK_SLICE : n;
	struct sample_ctx c = { .start = start, .base = from };
	struct tk_samples *b = bpf_map_lookup_elem(&batch, &zero);
	struct pending_list *l = bpf_map_lookup_elem(&pending, &zero);
	if (!b || !l)
		return 0;
	b->kind = TK_EV_SAMPLES;
	b->count = 0;
	b->ts_ns = start;
	l->count = 0;

	bpf_loop(to - from, find_one, &c, 0);
	bpf_loop(l->count, take_one, &c, 0);
	to = from + c.walked;
	emit_samples(b);
	if (to < n) {
		s->next = to;
		bpf_timer_start(&t->timer, TK_SLICE_GAP_NS, TK_TIMER_CPU_PIN);
	} else {
		/* The next tick keeps the phase; ticks missed (a VM's vCPU
		 * descheduled) are skipped, not run late one after another. */
		__u64 next = s->tick_ns + cfg_interval_ns;
		__u64 now = bpf_ktime_get_ns();
		if (next <= now)
			next += ((now - next) / cfg_interval_ns + 1) * cfg_interval_ns;
		s->tick_ns = next;
		s->next = 0;
		bpf_timer_start(&t->timer, next, TK_TIMER_ABS | TK_TIMER_CPU_PIN);
	}
	note_run(start);
	return 0;
}

/* Run once by the loader, on the sampling CPU: sets the sampler's timer
 * going, its first tick one interval from now. Only the iterator's first
 * call does it (the timer is set up once; later calls find it so). If the
 * timer cannot start, `tick_ns` stays 0 and the loader says so. */
SEC("iter/task")
int tk_arm(struct bpf_iter__task *ctx)
{
	__u32 zero = 0;
	struct tk_ticker *t = bpf_map_lookup_elem(&ticker, &zero);
	struct tk_sampler *s = bpf_map_lookup_elem(&sampler, &zero);

	if (!t || !s)
		return 0;
	if (bpf_timer_init(&t->timer, &ticker, TK_CLOCK_MONOTONIC))
		return 0;
	bpf_timer_set_callback(&t->timer, tk_tick);
	__u64 first = bpf_ktime_get_ns() + cfg_interval_ns;
	s->tick_ns = first;
	s->next = 0;
	if (bpf_timer_start(&t->timer, first, TK_TIMER_ABS | TK_TIMER_CPU_PIN))
		s->tick_ns = 0;
	return 0;
}

/* Run once by the agent after it adopts running processes (host scope):
 * gives each its signal_struct, which only a task pointer leads to. */
SEC("iter/task")
int tk_adopt(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;

	if (!task)
		return 0;
	__u32 tgid = task->tgid;
	struct tk_proc *p = bpf_map_lookup_elem(&procs, &tgid);
	if (!p)
		return 0;
	if (!p->signal)
		p->signal = (__u64)BPF_CORE_READ(task, signal);
	/* The sampler's shortcut needs the thread of a one-thread process. */
	if (!p->task && task->pid == tgid)
		p->task = (__u64)task;
	return 0;
}
