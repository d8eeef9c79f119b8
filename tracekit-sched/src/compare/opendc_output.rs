//! OpenDC's task output, `task.parquet`, as its `DfltTaskExportColumns`
//! writes it: periodic rows per task with `timestamp` (INT64 ms), `task_id`
//! (INT32), `task_name` (string, "" when the task has none),
//! `submission_time`, `schedule_time`, `finish_time` (optional INT64 ms) and
//! `task_state` (optional string: COMPLETED, FAILED, TERMINATED, …). A run's
//! output sits at `<output>/raw-output/<scenario>/seed=<seed>/task.parquet`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::model::RealTask;

/// The file name OpenDC gives its task output.
pub const TASK_FILE: &str = "task.parquet";
/// The state of a task that ran to its end.
pub const COMPLETED: &str = "COMPLETED";

/// Columns `compare` reads and cannot do without.
pub const REQUIRED: [&str; 5] = [
    "task_id",
    "submission_time",
    "schedule_time",
    "finish_time",
    "task_state",
];

/// A task the simulation completed: its last row.
#[derive(Debug, Clone, PartialEq)]
pub struct SimTask {
    pub id: i32,
    /// `task_name`; none when the column is absent or the name empty.
    pub name: Option<String>,
    pub submission_ms: i64,
    pub schedule_ms: i64,
    pub finish_ms: i64,
}

/// What the task output holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOutput {
    pub path: PathBuf,
    pub rows: u64,
    /// Completed tasks, by id.
    pub tasks: Vec<SimTask>,
    /// Tasks whose last row is in another state, by state.
    pub not_completed: BTreeMap<String, usize>,
}

/// The task output under `path`: `path` itself when it is a file, else the
/// one `task.parquet` below it (several is an error that lists them).
pub fn find(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        bail!("{}: no such file or directory", path.display());
    }
    let mut found = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let p = entry
                .with_context(|| format!("listing {}", dir.display()))?
                .path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == TASK_FILE) {
                found.push(p);
            }
        }
    }
    found.sort();
    match found.len() {
        0 => bail!(
            "{}: no {TASK_FILE} below it (OpenDC writes raw-output/<scenario>/seed=<seed>/{TASK_FILE})",
            path.display()
        ),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "{}: {} task outputs below it, pass one of them: {}",
            path.display(),
            found.len(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// An integer column, INT32 or INT64.
fn ints(batch: &RecordBatch, name: &str, path: &Path) -> Result<Option<Vec<Option<i64>>>> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let values = match col.data_type() {
        DataType::Int32 => col
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        DataType::Int64 => col.as_primitive::<Int64Type>().iter().collect(),
        other => bail!(
            "{}: column `{name}` is {other}, expected an integer (INT32 or INT64)",
            path.display()
        ),
    };
    Ok(Some(values))
}

/// A string column (UTF-8 of any offset width, or a view).
fn strings(batch: &RecordBatch, name: &str, path: &Path) -> Result<Option<Vec<Option<String>>>> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let own = |v: Option<&str>| v.map(str::to_string);
    let values = match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().iter().map(own).collect(),
        DataType::LargeUtf8 => col.as_string::<i64>().iter().map(own).collect(),
        DataType::Utf8View => col.as_string_view().iter().map(own).collect(),
        other => bail!(
            "{}: column `{name}` is {other}, expected a string",
            path.display()
        ),
    };
    Ok(Some(values))
}

/// Read the task output at `path` (a file): the last row of each task (by
/// `timestamp` when present, else file order).
pub fn read(path: &Path) -> Result<SimOutput> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{}: not a parquet file", path.display()))?;
    let schema = builder.schema().clone();
    for name in REQUIRED {
        if schema.field_with_name(name).is_err() {
            bail!(
                "{}: no column `{name}` (OpenDC's task output has {}; found: {})",
                path.display(),
                REQUIRED.join(", "),
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let wanted = ["timestamp", "task_name"];
    let roots: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            REQUIRED.contains(&f.name().as_str()) || wanted.contains(&f.name().as_str())
        })
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .with_context(|| format!("reading {}", path.display()))?;

    /// The last row of a task so far.
    struct Last {
        ts: i64,
        row: u64,
        name: Option<String>,
        submission: Option<i64>,
        schedule: Option<i64>,
        finish: Option<i64>,
        state: Option<String>,
    }
    let mut last: HashMap<i32, Last> = HashMap::new();
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.with_context(|| format!("reading {}", path.display()))?;
        let need = |c: Option<Vec<Option<i64>>>, name: &str| {
            c.with_context(|| format!("{}: no column `{name}`", path.display()))
        };
        let ids = need(ints(&batch, "task_id", path)?, "task_id")?;
        let sub = need(ints(&batch, "submission_time", path)?, "submission_time")?;
        let sched = need(ints(&batch, "schedule_time", path)?, "schedule_time")?;
        let fin = need(ints(&batch, "finish_time", path)?, "finish_time")?;
        let ts = ints(&batch, "timestamp", path)?;
        let names = strings(&batch, "task_name", path)?;
        let states = strings(&batch, "task_state", path)?
            .with_context(|| format!("{}: no column `task_state`", path.display()))?;
        for i in 0..batch.num_rows() {
            rows += 1;
            let Some(id) = ids[i] else {
                bail!("{}: row {rows}: `task_id` is null", path.display());
            };
            let id = i32::try_from(id).with_context(|| {
                format!("{}: row {rows}: task_id {id} exceeds INT32", path.display())
            })?;
            let t = ts.as_ref().and_then(|v| v[i]).unwrap_or(i64::MIN);
            let newer = last.get(&id).is_none_or(|l| t >= l.ts);
            if newer {
                last.insert(
                    id,
                    Last {
                        ts: t,
                        row: rows,
                        name: names
                            .as_ref()
                            .and_then(|v| v[i].clone())
                            .filter(|n| !n.is_empty()),
                        submission: sub[i],
                        schedule: sched[i],
                        finish: fin[i],
                        state: states[i].clone(),
                    },
                );
            }
        }
    }
    let mut tasks = Vec::with_capacity(last.len());
    let mut not_completed = BTreeMap::new();
    for (id, l) in last {
        let state = l.state.unwrap_or_default();
        if state != COMPLETED {
            let label = if state.is_empty() {
                "(none)".into()
            } else {
                state
            };
            *not_completed.entry(label).or_default() += 1;
            continue;
        }
        let field = |v: Option<i64>, name: &str| {
            v.with_context(|| {
                format!(
                    "{}: row {}: task {id} is COMPLETED but `{name}` is null",
                    path.display(),
                    l.row
                )
            })
        };
        tasks.push(SimTask {
            id,
            name: l.name,
            submission_ms: field(l.submission, "submission_time")?,
            schedule_ms: field(l.schedule, "schedule_time")?,
            finish_ms: field(l.finish, "finish_time")?,
        });
    }
    tasks.sort_by_key(|t| t.id);
    Ok(SimOutput {
        path: path.to_path_buf(),
        rows,
        tasks,
        not_completed,
    })
}

/// One row of a task output, for [`write`].
#[derive(Debug, Clone, PartialEq)]
pub struct SimRow {
    pub timestamp: i64,
    pub task_id: i32,
    pub task_name: String,
    pub submission_time: Option<i64>,
    pub schedule_time: Option<i64>,
    pub finish_time: Option<i64>,
    pub task_state: Option<String>,
}

/// Write `rows` as OpenDC's task output with the columns `compare` reads,
/// typed as `DfltTaskExportColumns` declares them (for tests and
/// benchmarks, which need a simulation's output without running OpenDC).
pub fn write(path: &Path, rows: &[SimRow]) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("timestamp", DataType::Int64, false),
        Field::new("task_id", DataType::Int32, false),
        Field::new("task_name", DataType::Utf8, false),
        Field::new("submission_time", DataType::Int64, true),
        Field::new("schedule_time", DataType::Int64, true),
        Field::new("finish_time", DataType::Int64, true),
        Field::new("task_state", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.timestamp),
        )),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.task_id))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.task_name.as_str()),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|r| r.submission_time),
        )),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.schedule_time))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.finish_time))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.task_state.as_deref()),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).context("building the task rows")?;
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = ArrowWriter::try_new(file, schema, None)
        .with_context(|| format!("starting {}", tmp.display()))?;
    if batch.num_rows() > 0 {
        w.write(&batch)
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    w.close()
        .with_context(|| format!("closing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The tasks a simulation that reproduced `real` exactly would complete
/// (time zero at the first submission), with every schedule and finish
/// `shift_ms` later and every run `scale` times as long; with `names`,
/// `task_name` holds the trace id, else the export's id alone joins them
/// (for tests and benchmarks).
pub fn replay(real: &[RealTask], names: bool, shift_ms: i64, scale: f64) -> Vec<SimTask> {
    let origin = real.iter().map(|t| t.ts_enqueue).min().unwrap_or(0);
    real.iter()
        .filter_map(|t| {
            let schedule = t.ts_start - origin + shift_ms;
            Some(SimTask {
                id: t.id?,
                name: names.then(|| t.trace_id.clone()),
                submission_ms: t.ts_enqueue - origin,
                schedule_ms: schedule,
                finish_ms: schedule + ((t.ts_end - t.ts_start) as f64 * scale).round() as i64,
            })
        })
        .collect()
}

/// Rows a simulation would write for a task that completed: one per
/// `period_ms` from its submission, the last at its finish.
pub fn rows_of(task: &SimTask, period_ms: i64) -> Vec<SimRow> {
    let mut out = Vec::new();
    let mut t = task.submission_ms;
    let row = |t: i64, state: &str, finish: Option<i64>, schedule: Option<i64>| SimRow {
        timestamp: t,
        task_id: task.id,
        task_name: task.name.clone().unwrap_or_default(),
        submission_time: Some(task.submission_ms),
        schedule_time: schedule,
        finish_time: finish,
        task_state: Some(state.into()),
    };
    while t < task.finish_ms {
        let (state, schedule) = if t < task.schedule_ms {
            ("PROVISIONING", None)
        } else {
            ("RUNNING", Some(task.schedule_ms))
        };
        out.push(row(t, state, None, schedule));
        t += period_ms.max(1);
    }
    out.push(row(
        task.finish_ms,
        COMPLETED,
        Some(task.finish_ms),
        Some(task.schedule_ms),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_row_of_each_completed_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TASK_FILE);
        let a = SimTask {
            id: 7,
            name: Some("node1-000001".into()),
            submission_ms: 0,
            schedule_ms: 1000,
            finish_ms: 5000,
        };
        let b = SimTask {
            id: 8,
            name: None,
            submission_ms: 0,
            schedule_ms: 2000,
            finish_ms: 9000,
        };
        let mut rows = rows_of(&b, 1000);
        rows.extend(rows_of(&a, 1000));
        // A task still running at the end of the simulation.
        rows.push(SimRow {
            timestamp: 9000,
            task_id: 9,
            task_name: "x".into(),
            submission_time: Some(0),
            schedule_time: Some(100),
            finish_time: None,
            task_state: Some("RUNNING".into()),
        });
        write(&path, &rows).unwrap();
        let out = read(&find(dir.path()).unwrap()).unwrap();
        assert_eq!(out.rows, rows.len() as u64);
        assert_eq!(out.tasks, vec![a, b]);
        assert_eq!(out.not_completed.get("RUNNING"), Some(&1));
    }

    #[test]
    fn missing_column_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TASK_FILE);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "task_id",
            DataType::Int32,
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from(vec![1])) as ArrayRef],
        )
        .unwrap();
        let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(err.contains("no column `submission_time`"), "{err}");
        assert!(err.contains(TASK_FILE), "{err}");
    }
}
