"""Independent check of an OpenDC export with pyarrow.

Usage: pyarrow_check.py RUN_DIR OUT_DIR [SIZING [UNMEASURED]]

SIZING is peak (default) or p95, UNMEASURED is skip (default) or original:
the export's --cpu-sizing and --unmeasured-cpu. Reads the raw trace files
itself (its own join of samples to tasks by pid and time), and checks the
schema (types, required, annotations) and every value of tasks.parquet and
fragments.parquet, small_datacenter.json and experiment.json, against what
OpenDC's code reads (see docs/opendc.md).
"""

import json
import math
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
sizing = sys.argv[3] if len(sys.argv) > 3 else "peak"
unmeasured_mode = sys.argv[4] if len(sys.argv) > 4 else "skip"
errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)


def check_schema(path, expected):
    pf = pq.ParquetFile(path)
    arrow = pf.schema_arrow
    check([f.name for f in arrow] == [n for n, _, _, _ in expected],
          f"{path.name}: columns {[f.name for f in arrow]}")
    for name, arrow_type, physical, required in expected:
        field = arrow.field(name)
        check(field.type == arrow_type, f"{path.name}.{name}: type {field.type}")
        check(field.nullable != required, f"{path.name}.{name}: nullable {field.nullable}")
        col = pf.schema.column(arrow.get_field_index(name))
        check(col.physical_type == physical,
              f"{path.name}.{name}: physical {col.physical_type}")
        # Required in parquet terms: no definition levels.
        check((col.max_definition_level == 0) == required,
              f"{path.name}.{name}: definition level {col.max_definition_level}")
    return pf, pq.read_table(path)


tasks_pf, tasks = check_schema(out_dir / "tasks.parquet", [
    ("id", pa.int32(), "INT32", True),
    ("name", pa.string(), "BYTE_ARRAY", False),
    ("submission_time", pa.timestamp("ms", tz="UTC"), "INT64", True),
    ("duration", pa.int64(), "INT64", True),
    ("cpu_count", pa.int32(), "INT32", True),
    ("cpu_capacity", pa.float64(), "DOUBLE", True),
    ("mem_capacity", pa.int64(), "INT64", True),
])
# OpenDC's TaskSchemas.kt: INT64 TIMESTAMP(isAdjustedToUTC=true, MILLIS), and name a UTF-8 string.
sub_col = tasks_pf.schema.column(2)
check(str(sub_col.logical_type) == "Timestamp(isAdjustedToUTC=true, timeUnit=milliseconds, "
      "is_from_converted_type=false, force_set_converted_type=false)",
      f"submission_time logical type {sub_col.logical_type}")
check(str(tasks_pf.schema.column(1).logical_type) == "String",
      f"name logical type {tasks_pf.schema.column(1).logical_type}")
_, frags = check_schema(out_dir / "fragments.parquet", [
    ("id", pa.int32(), "INT32", True),
    ("duration", pa.int64(), "INT64", True),
    ("cpu_usage", pa.float64(), "DOUBLE", True),
])

# --- the trace, read independently ---------------------------------------
if (run_dir / "node_meta.json").exists():
    nodes = [run_dir]
else:
    nodes = sorted(p for p in run_dir.iterdir() if (p / "node_meta.json").exists())
all_tasks = []
node_hosts = {}
run_ids = set()
for node_dir in nodes:
    meta = json.loads((node_dir / "node_meta.json").read_text())
    run_ids.add(meta["run_id"])
    cts = node_dir / "CTS" if (node_dir / "CTS").is_dir() else node_dir / "cctf"
    entries = json.loads((cts / "nodes.json").read_text())
    entry = next((e for e in entries if e["node_id"] == meta["node"]), entries[0])
    mhz = float(round(float(entry["cpu_freq_mhz"])))
    cores = int(entry["cpu_cores"])
    node_hosts[node_dir.name] = (cores, mhz, int(entry["mem_mb"]))
    invs = [json.loads(l) for l in (cts / "invocations.jsonl").read_text().splitlines() if l.strip()]
    by_pid = {}
    for inv in invs:
        inv.update(node=node_dir.name, mhz=mhz, cores=cores, peak=0, sampled=0.0, measured=False)
        by_pid.setdefault(inv["pid"], []).append(inv)
    for line in (cts / "proc_metrics.jsonl").read_text().splitlines():
        s = json.loads(line)
        ts, dt = s["ts_ms"], s["dt_ms"]
        hits = [i for i in by_pid.get(s["pid"], []) if i["ts_start"] <= ts <= i["ts_end"]]
        if not hits:
            continue
        # Two runs of one PID touch: the one holding the sample's interval.
        hits.sort(key=lambda i: (-(min(ts, i["ts_end"]) - max(ts - dt, i["ts_start"])), i["ts_start"]))
        task = hits[0]
        task["peak"] = max(task["peak"], s.get("rss_kb") or 0)
        task["sampled"] += s["cpu_ms"]
        # dt_ms = 0 is the original collector's baseline, not a measurement.
        if dt > 0 and ts > task["ts_start"] and s.get("cpu_ms") is not None:
            task["measured"] = True
    all_tasks.extend(invs)

node_order = {p.name: k for k, p in enumerate(nodes)}
all_tasks.sort(key=lambda t: (t["ts_enqueue"], t["ts_start"], node_order[t["node"]], t["pid"], t["ts_end"]))
pids = [t["pid"] for t in all_tasks]
pid_ids = len(set(pids)) == len(pids)
for k, t in enumerate(all_tasks):
    t["id"] = t["pid"] if pid_ids else k + 1
    t["measured"] = t["measured"] or t.get("cpu_ms") is not None
expected = [t for t in all_tasks if t["measured"] or unmeasured_mode != "skip"]

# --- values -----------------------------------------------------------------
rows = tasks.to_pylist()
check(len(rows) == len(expected), f"{len(rows)} task rows for {len(expected)} expected tasks")
frag_by_id = {}
for f in frags.to_pylist():
    frag_by_id.setdefault(f["id"], []).append(f)
check(len(frag_by_id) == len(rows), "every task has fragments, and no other id does")


def p95(values):
    v = sorted(values)
    pos = 0.95 * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return min(v[lo] + (v[hi] - v[lo]) * (pos - lo), v[-1])


for k, (row, t) in enumerate(zip(rows, expected)):
    what = f"task {t['trace_id']} (row {k})"
    mhz, cores = t["mhz"], t["cores"]
    check(row["id"] == t["id"], f"{what}: id {row['id']} != {t['id']}")
    check(row["name"] == t["trace_id"], f"{what}: name {row['name']!r}")
    sub = row["submission_time"]
    check(int(sub.timestamp() * 1000) == t["ts_enqueue"] and str(sub.tzinfo) in ("UTC", "+00:00"),
          f"{what}: submission_time {sub}")
    duration = max(t["ts_end"] - t["ts_start"], 1)
    check(row["duration"] == duration, f"{what}: duration {row['duration']} != {duration}")
    fs = frag_by_id.get(row["id"], [])
    check(sum(f["duration"] for f in fs) == duration, f"{what}: fragments do not tile")
    check(all(f["duration"] > 0 for f in fs), f"{what}: empty fragment")
    usage = [f["cpu_usage"] for f in fs]
    check(all(0.1 <= u <= mhz * cores for u in usage), f"{what}: usage out of range")
    cpu = sum(f["cpu_usage"] / mhz * f["duration"] for f in fs)
    if t.get("cpu_ms") is not None:
        check(abs(cpu - t["cpu_ms"]) < 2e-3, f"{what}: fragments carry {cpu} ms, exact {t['cpu_ms']}")
        check(abs(t["sampled"] - t["cpu_ms"]) < 2e-3 + 1e-3 * len(fs), f"{what}: samples vs exact")
    if not t["measured"]:
        # --unmeasured-cpu original: one fragment at a quarter of a core.
        check(usage == [0.25 * mhz], f"{what}: unmeasured task got {usage}")
    cap = max(usage) if sizing == "peak" else p95(usage)
    check(abs(row["cpu_capacity"] - cap) <= 1e-9 * cap, f"{what}: capacity {row['cpu_capacity']} != {cap}")
    if sizing == "peak":
        # The replay conserves CPU: no fragment above the capacity.
        check(all(u <= row["cpu_capacity"] for u in usage), f"{what}: a fragment exceeds cpu_capacity")
    count = min(max(math.ceil(cap / mhz), 1), cores)
    check(row["cpu_count"] == count, f"{what}: cpu_count {row['cpu_count']} != {count}")
    # OpenDC's VCpuFilter and VCpuCapacityFilter on a host of this node.
    check(1 <= row["cpu_count"] <= cores, f"{what}: cpu_count {row['cpu_count']} > {cores} cores")
    check(row["cpu_capacity"] / row["cpu_count"] <= mhz,
          f"{what}: {row['cpu_capacity']} MHz on {row['cpu_count']} core(s) exceeds coreSpeed {mhz}")
    peak = max(t["peak"], t.get("rss_peak_kb") or 0, 1024)
    check(row["mem_capacity"] == peak, f"{what}: mem_capacity {row['mem_capacity']} != {peak}")

dc = json.loads((out_dir / "small_datacenter.json").read_text())
hosts = dc["clusters"][0]["hosts"]
check(dc["clusters"][0]["name"] == "C01", "cluster name")
check(sum(h["count"] for h in hosts) == len(nodes), "host count")
specs = {}
for h in hosts:
    check(list(h) == ["name", "count", "cpu", "memory"], f"host keys {list(h)}")
    check(list(h["cpu"]) == ["coreCount", "coreSpeed"], "cpu keys")
    check(isinstance(h["cpu"]["coreSpeed"], int), f"coreSpeed {h['cpu']['coreSpeed']!r} is a number in MHz")
    size = h["memory"]["memorySize"]
    check(isinstance(size, str) and size.endswith(" MiB"), f"memorySize {size!r} carries its unit")
    specs[(h["cpu"]["coreCount"], float(h["cpu"]["coreSpeed"]), int(size.split()[0]))] = h["count"]
for name, key in node_hosts.items():
    check(key in specs, f"node {name}: no host {key} in the topology")

exp = json.loads((out_dir / "experiment.json").read_text())
check(exp["name"] == "+".join(sorted(run_ids)), f"experiment name {exp['name']}")
check(exp["topologies"] == [{"pathToFile": str((out_dir / "small_datacenter.json").resolve())}],
      f"experiment topologies {exp['topologies']}")
check(exp["workloads"] == [{"pathToFile": str(out_dir.resolve()), "type": "ComputeWorkload"}],
      f"experiment workloads {exp['workloads']}")

if errors:
    print(f"{len(errors)} error(s):")
    for e in errors[:50]:
        print(" -", e)
    sys.exit(1)
print(f"ok: {len(rows)} tasks, {frags.num_rows} fragments checked")
