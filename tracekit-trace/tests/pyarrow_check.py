"""Independent check of an OpenDC export with pyarrow.

Usage: pyarrow_check.py RUN_DIR OUT_DIR

Reads the raw trace files itself (its own join of samples to tasks by pid and
time), and checks the schema (types, required) and every value of
tasks.parquet and fragments.parquet, and small_datacenter.json.
"""

import json
import math
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)


def check_schema(path, expected):
    pf = pq.ParquetFile(path)
    arrow = pf.schema_arrow
    check([f.name for f in arrow] == [n for n, _, _ in expected],
          f"{path.name}: columns {[f.name for f in arrow]}")
    for name, arrow_type, physical in expected:
        field = arrow.field(name)
        check(field.type == arrow_type, f"{path.name}.{name}: type {field.type}")
        check(not field.nullable, f"{path.name}.{name}: nullable")
        col = pf.schema.column(arrow.get_field_index(name))
        check(col.physical_type == physical,
              f"{path.name}.{name}: physical {col.physical_type}")
        # Required in parquet terms: no definition levels.
        check(col.max_definition_level == 0, f"{path.name}.{name}: not REQUIRED")
    return pq.read_table(path)


tasks = check_schema(out_dir / "tasks.parquet", [
    ("id", pa.int32(), "INT32"),
    ("submission_time", pa.int64(), "INT64"),
    ("duration", pa.int64(), "INT64"),
    ("cpu_count", pa.int32(), "INT32"),
    ("cpu_capacity", pa.float64(), "DOUBLE"),
    ("mem_capacity", pa.int64(), "INT64"),
])
frags = check_schema(out_dir / "fragments.parquet", [
    ("id", pa.int32(), "INT32"),
    ("duration", pa.int64(), "INT64"),
    ("cpu_usage", pa.float64(), "DOUBLE"),
])

# --- the trace, read independently ---------------------------------------
nodes = sorted(p for p in run_dir.iterdir() if (p / "node_meta.json").exists())
all_tasks = []
for node_dir in nodes:
    meta = json.loads((node_dir / "node_meta.json").read_text())
    invs = [json.loads(l) for l in (node_dir / "CTS/invocations.jsonl").read_text().splitlines() if l.strip()]
    by_pid = {}
    for inv in invs:
        inv.update(node=node_dir.name, mhz=float(meta["cpu_freq_mhz"]), cores=int(meta["cpu_cores"]),
                   peak=0, sampled=0.0)
        by_pid.setdefault(inv["pid"], []).append(inv)
    for line in (node_dir / "CTS/proc_metrics.jsonl").read_text().splitlines():
        s = json.loads(line)
        ts, dt = s["ts_ms"], s["dt_ms"]
        hits = [i for i in by_pid.get(s["pid"], []) if i["ts_start"] <= ts <= i["ts_end"]]
        if not hits:
            continue
        # Two runs of one PID touch: the one holding the sample's interval.
        hits.sort(key=lambda i: (-(min(ts, i["ts_end"]) - max(ts - dt, i["ts_start"])), i["ts_start"]))
        task = hits[0]
        task["peak"] = max(task["peak"], s["rss_kb"])
        task["sampled"] += s["cpu_ms"]
    all_tasks.extend(invs)

node_order = {p.name: k for k, p in enumerate(nodes)}
all_tasks.sort(key=lambda t: (t["ts_enqueue"], t["ts_start"], node_order[t["node"]], t["pid"], t["ts_end"]))
pids = [t["pid"] for t in all_tasks]
pid_ids = len(set(pids)) == len(pids)

# --- values -----------------------------------------------------------------
rows = tasks.to_pylist()
check(len(rows) == len(all_tasks), f"{len(rows)} task rows for {len(all_tasks)} tasks")
frag_by_id = {}
for f in frags.to_pylist():
    frag_by_id.setdefault(f["id"], []).append(f)
check(len(frag_by_id) == len(rows), "every task has fragments, and no other id does")


def p95(values):
    v = sorted(values)
    pos = 0.95 * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


for k, (row, t) in enumerate(zip(rows, all_tasks)):
    what = f"task {t['trace_id']} (row {k})"
    expected_id = t["pid"] if pid_ids else k + 1
    check(row["id"] == expected_id, f"{what}: id {row['id']} != {expected_id}")
    check(row["submission_time"] == t["ts_enqueue"], f"{what}: submission_time")
    duration = max(t["ts_end"] - t["ts_start"], 1)
    check(row["duration"] == duration, f"{what}: duration {row['duration']} != {duration}")
    fs = frag_by_id.get(row["id"], [])
    check(sum(f["duration"] for f in fs) == duration, f"{what}: fragments do not tile")
    check(all(f["duration"] > 0 for f in fs), f"{what}: empty fragment")
    usage = [f["cpu_usage"] for f in fs]
    check(all(0.1 <= u <= t["mhz"] * t["cores"] for u in usage), f"{what}: usage out of range")
    cpu = sum(f["cpu_usage"] / t["mhz"] * f["duration"] for f in fs)
    check(abs(cpu - t["cpu_ms"]) < 2e-3, f"{what}: fragments carry {cpu} ms, exact {t['cpu_ms']}")
    check(abs(t["sampled"] - t["cpu_ms"]) < 2e-3 + 1e-3 * len(fs), f"{what}: samples vs exact")
    cap = p95(usage)
    check(abs(row["cpu_capacity"] - cap) <= 1e-6 * cap, f"{what}: capacity {row['cpu_capacity']} != {cap}")
    count = min(max(math.floor(cap / t["mhz"] + 0.5), 1), t["cores"])
    check(row["cpu_count"] == count, f"{what}: cpu_count {row['cpu_count']} != {count}")
    peak = max(t["peak"], t.get("rss_peak_kb") or 0, 1024)
    check(row["mem_capacity"] == peak, f"{what}: mem_capacity {row['mem_capacity']} != {peak}")

dc = json.loads((out_dir / "small_datacenter.json").read_text())
hosts = dc["clusters"][0]["hosts"]
check(dc["clusters"][0]["name"] == "C01", "cluster name")
check(sum(h["count"] for h in hosts) == len(nodes), "host count")
for h in hosts:
    check(list(h) == ["name", "count", "cpu", "memory"], f"host keys {list(h)}")
    check(list(h["cpu"]) == ["coreCount", "coreSpeed"], "cpu keys")
    check(h["memory"]["memorySize"] % (1024 ** 3) == 0, "memory in whole GiB")

if errors:
    print(f"{len(errors)} error(s):")
    for e in errors[:50]:
        print(" -", e)
    sys.exit(1)
print(f"ok: {len(rows)} tasks, {frags.num_rows} fragments checked")
