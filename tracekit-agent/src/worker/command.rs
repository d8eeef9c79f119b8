//! A task's ffmpeg command: every field validated, then built as an argument
//! vector (never a shell string):
//! `ffmpeg -i IN -vf scale=S -c:v LIB -preset P -crf C [-threads:v VT]
//! [-filter_threads FT] -c:a copy OUT`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracekit_proto::Task;

use super::runas::RunAs;

/// The worker's limits on a task.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Canonical root that inputs must lie under.
    pub inputs: PathBuf,
    /// Canonical root that outputs must lie under.
    pub outputs: PathBuf,
    /// Logical cores of this node: the most units a task may ask for.
    pub cores: u32,
}

/// A validated task, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub input: PathBuf,
    pub output: PathBuf,
    pub units: u32,
    pub argv: Vec<String>,
}

impl Plan {
    /// Have ffmpeg write to `path` instead of the output (the output is the
    /// argument vector's last element, see [`plan`]).
    pub fn write_to(&mut self, path: &Path) {
        if let Some(last) = self.argv.last_mut() {
            *last = path.to_string_lossy().into_owned();
        }
    }
}

/// Why a task is not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

fn reject(msg: impl Into<String>) -> Rejection {
    Rejection(msg.into())
}

/// Bounds on `scale`: 16..=7680 × 16..=4320, even numbers (x264/x265 with
/// 4:2:0 need them).
const MIN_DIM: u32 = 16;
const MAX_W: u32 = 7680;
const MAX_H: u32 = 4320;

pub fn plan(task: &Task, limits: &Limits) -> Result<Plan, Rejection> {
    task.validate().map_err(|e| reject(e.to_string()))?;
    let (w, h) = task
        .scale_wh()
        .map_err(|e| reject(e.to_string()))?
        .ok_or_else(|| reject("invalid field `scale`: missing"))?;
    if !(MIN_DIM..=MAX_W).contains(&w) || !(MIN_DIM..=MAX_H).contains(&h) || w % 2 + h % 2 != 0 {
        return Err(reject(format!(
            "invalid field `scale`: {w}:{h} is not within {MIN_DIM}..={MAX_W} x {MIN_DIM}..={MAX_H} with even sides"
        )));
    }
    let encoder = task.encoder().map_err(|e| reject(e.to_string()))?;
    let preset = task.preset.clone().unwrap_or_else(|| "medium".into());
    let crf = task.crf.unwrap_or(28);
    for (field, v) in [("vthreads", task.vthreads), ("fthreads", task.fthreads)] {
        if let Some(n) = v
            && !(1..=64).contains(&n)
        {
            return Err(reject(format!(
                "invalid field `{field}`: {n} is not in 1..=64"
            )));
        }
    }
    let units = task.units();
    if units < 1 || units > i64::from(limits.cores) {
        return Err(reject(format!(
            "invalid field `cpu_units`: {units} is not in 1..={} (this node's cores)",
            limits.cores
        )));
    }
    let input = resolve_input(&task.input, &limits.inputs)?;
    let output = resolve_output(&task.output, &limits.outputs)?;
    let mut argv: Vec<String> = vec![
        "ffmpeg".into(),
        "-nostdin".into(),
        "-hide_banner".into(),
        "-y".into(),
        "-i".into(),
        input.to_string_lossy().into_owned(),
        "-vf".into(),
        format!("scale={w}:{h}"),
        "-c:v".into(),
        encoder.into(),
        "-preset".into(),
        preset,
        "-crf".into(),
        crf.to_string(),
    ];
    if let Some(vt) = task.vthreads {
        argv.extend(["-threads:v".into(), vt.to_string()]);
    }
    if let Some(ft) = task.fthreads {
        argv.extend(["-filter_threads".into(), ft.to_string()]);
    }
    argv.extend([
        "-c:a".into(),
        "copy".into(),
        output.to_string_lossy().into_owned(),
    ]);
    Ok(Plan {
        input,
        output,
        units: units as u32,
        argv,
    })
}

/// A relative path is taken from the agent's working directory, as the
/// original's worker did (tasks name `outputs/<file>`).
fn absolute(raw: &str) -> Result<PathBuf, Rejection> {
    let p = Path::new(raw);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(p))
        .map_err(|e| reject(format!("resolving {raw}: {e}")))
}

/// The input must be an existing regular file whose real path (symlinks
/// resolved) lies under the inputs root.
fn resolve_input(raw: &str, root: &Path) -> Result<PathBuf, Rejection> {
    let real = absolute(raw)?
        .canonicalize()
        .map_err(|e| reject(format!("invalid field `input`: {raw}: {e}")))?;
    if !real.starts_with(root) {
        return Err(reject(format!(
            "invalid field `input`: {raw} is not under the inputs root {}",
            root.display()
        )));
    }
    if !real.is_file() {
        return Err(reject(format!(
            "invalid field `input`: {raw} is not a regular file"
        )));
    }
    Ok(real)
}

/// The output's directory must have a real path under the outputs root (it
/// is created there if missing), and the output itself must not be a symlink.
fn resolve_output(raw: &str, root: &Path) -> Result<PathBuf, Rejection> {
    let joined = absolute(raw)?;
    let name = joined
        .file_name()
        .ok_or_else(|| reject(format!("invalid field `output`: {raw} names no file")))?
        .to_owned();
    let dir = joined.parent().unwrap_or(root);
    if dir.starts_with(root) && !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| {
            reject(format!(
                "invalid field `output`: creating {}: {e}",
                dir.display()
            ))
        })?;
    }
    let real_dir = dir
        .canonicalize()
        .map_err(|e| reject(format!("invalid field `output`: {raw}: {e}")))?;
    if !real_dir.starts_with(root) {
        return Err(reject(format!(
            "invalid field `output`: {raw} is not under the outputs root {}",
            root.display()
        )));
    }
    let out = real_dir.join(name);
    if out
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(reject(format!(
            "invalid field `output`: {raw} is a symlink"
        )));
    }
    Ok(out)
}

/// Permission bits, as in a mode's classes.
const READ: u32 = 4;
const WRITE: u32 = 2;
const SEARCH: u32 = 1;

/// Whether `user` may read the input and write the output where the plan
/// puts them, judged from owners and mode bits the way the kernel does
/// without ACLs (the owner class alone decides for the owner, the group
/// class for members of the file's group). Checked before ffmpeg starts, so
/// a task that can never run as this user says why at once instead of
/// failing its attempts. A file with POSIX ACLs may be judged wrongly: its
/// group bits are then the ACL's mask.
pub fn check_access(plan: &Plan, user: &RunAs) -> Result<(), Rejection> {
    if user.is_root() {
        return Ok(());
    }
    let denied = |what: &str, path: &Path, m: &std::fs::Metadata| {
        reject(format!(
            "the run-as user {} (uid {}) cannot {what} {} (mode {:04o}, owner {}:{})",
            user.name,
            user.uid,
            path.display(),
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        ))
    };
    let meta = |p: &Path| {
        std::fs::metadata(p).map_err(|e| reject(format!("checking {}: {e}", p.display())))
    };
    let search_ancestors = |p: &Path| -> Result<(), Rejection> {
        for dir in p.ancestors().skip(1) {
            let m = meta(dir)?;
            if !allows(&m, user, SEARCH) {
                return Err(denied("enter", dir, &m));
            }
        }
        Ok(())
    };
    search_ancestors(&plan.input)?;
    let m = meta(&plan.input)?;
    if !allows(&m, user, READ) {
        return Err(denied("read the input", &plan.input, &m));
    }
    let out_dir = plan
        .output
        .parent()
        .ok_or_else(|| reject(format!("{} has no directory", plan.output.display())))?;
    search_ancestors(&plan.output)?;
    let m = meta(out_dir)?;
    if !allows(&m, user, WRITE | SEARCH) {
        return Err(denied("write in the output folder", out_dir, &m));
    }
    // ffmpeg -y truncates an existing output: that needs write on the file.
    if let Ok(m) = std::fs::metadata(&plan.output)
        && !allows(&m, user, WRITE)
    {
        return Err(denied("overwrite the output", &plan.output, &m));
    }
    Ok(())
}

/// Whether the mode bits of `m` grant `want` to `user` (not root).
fn allows(m: &std::fs::Metadata, user: &RunAs, want: u32) -> bool {
    let mode = m.mode();
    let class = if m.uid() == user.uid {
        mode >> 6
    } else if m.gid() == user.gid || user.groups.contains(&m.gid()) {
        mode >> 3
    } else {
        mode
    };
    class & want == want
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _tmp: tempfile::TempDir,
        limits: Limits,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let inputs = tmp.path().join("inputs");
        let outputs = tmp.path().join("outputs");
        std::fs::create_dir_all(&inputs).expect("mkdir");
        std::fs::create_dir_all(&outputs).expect("mkdir");
        std::fs::write(inputs.join("a.mp4"), b"x").expect("write");
        std::fs::write(tmp.path().join("secret.mp4"), b"x").expect("write");
        std::os::unix::fs::symlink(tmp.path().join("secret.mp4"), inputs.join("link.mp4"))
            .expect("symlink");
        std::os::unix::fs::symlink(tmp.path(), outputs.join("escape")).expect("symlink");
        let limits = Limits {
            inputs: inputs.canonicalize().expect("canon"),
            outputs: outputs.canonicalize().expect("canon"),
            cores: 2,
        };
        Fixture { _tmp: tmp, limits }
    }

    fn task(f: &Fixture, edit: impl FnOnce(&mut serde_json::Value)) -> Task {
        let mut v = serde_json::json!({
            "input": f.limits.inputs.join("a.mp4"),
            "output": f.limits.outputs.join("a_854x480.mp4"),
            "scale": "854:480", "vcodec": "h264", "preset": "medium", "crf": 28,
            "vthreads": 2, "fthreads": 2, "cpu_units": 2
        });
        edit(&mut v);
        Task::parse(&v.to_string()).expect("parses")
    }

    #[test]
    fn builds_the_argument_vector() {
        let f = fixture();
        let p = plan(&task(&f, |_| {}), &f.limits).expect("valid");
        let out = f.limits.outputs.join("a_854x480.mp4");
        let input = f.limits.inputs.join("a.mp4");
        let expected: Vec<String> = [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-y",
            "-i",
            input.to_str().expect("utf8"),
            "-vf",
            "scale=854:480",
            "-c:v",
            "libx264",
            "-preset",
            "medium",
            "-crf",
            "28",
            "-threads:v",
            "2",
            "-filter_threads",
            "2",
            "-c:a",
            "copy",
            out.to_str().expect("utf8"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(p.argv, expected);
        assert_eq!(p.units, 2);
        let hevc = plan(&task(&f, |v| v["vcodec"] = "hevc".into()), &f.limits).expect("valid");
        assert!(hevc.argv.contains(&"libx265".to_string()));
        let sub = f.limits.outputs.join("sub/b.mp4");
        let nested = plan(&task(&f, |v| v["output"] = sub.to_str().into()), &f.limits);
        assert_eq!(
            nested.expect("valid").output,
            sub,
            "sub-directories are created"
        );
    }

    #[test]
    fn rejects_every_bad_field() {
        let f = fixture();
        let link = f.limits.inputs.join("link.mp4");
        let escape = f.limits.outputs.join("escape/x.mp4");
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("scale", Box::new(|v| v["scale"] = "99999:480".into())),
            ("scale", Box::new(|v| v["scale"] = "853:480".into())),
            ("scale", Box::new(|v| v["scale"] = "854x480".into())),
            ("vcodec", Box::new(|v| v["vcodec"] = "vp9".into())),
            ("preset", Box::new(|v| v["preset"] = "; rm -rf /".into())),
            ("crf", Box::new(|v| v["crf"] = 52.into())),
            ("vthreads", Box::new(|v| v["vthreads"] = 0.into())),
            ("fthreads", Box::new(|v| v["fthreads"] = 65.into())),
            ("cpu_units", Box::new(|v| v["cpu_units"] = 3.into())),
            ("cpu_units", Box::new(|v| v["cpu_units"] = 0.into())),
            ("input", Box::new(|v| v["input"] = "missing.mp4".into())),
            ("input", Box::new(|v| v["input"] = "/etc/passwd".into())),
            (
                "input",
                Box::new(move |v| v["input"] = link.to_str().into()),
            ),
            ("input", Box::new(|v| v["input"] = "../secret.mp4".into())),
            ("output", Box::new(|v| v["output"] = "/tmp/x.mp4".into())),
            ("output", Box::new(|v| v["output"] = "../x.mp4".into())),
            (
                "output",
                Box::new(move |v| v["output"] = escape.to_str().into()),
            ),
        ];
        for (field, edit) in cases {
            let t = task(&f, edit);
            let e = plan(&t, &f.limits).expect_err(&format!("{t:?} must be rejected"));
            assert!(e.0.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn access_is_judged_as_the_run_as_user() {
        use std::os::unix::fs::PermissionsExt;
        let f = fixture();
        let p = plan(&task(&f, |_| {}), &f.limits).expect("valid");
        let outputs = p.output.parent().expect("dir").to_path_buf();
        let me = RunAs {
            name: "tester".into(),
            uid: 4242,
            gid: 4242,
            groups: vec![4242],
        };
        let set = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        // A folder closed to others: a stranger cannot even enter it.
        set(f._tmp.path(), 0o700);
        let e = check_access(&p, &me).expect_err("denied");
        assert!(e.0.contains("cannot enter"), "{e}");
        for dir in p.input.ancestors().skip(1).take(2) {
            set(dir, 0o755);
        }
        set(&p.input, 0o600);
        let e = check_access(&p, &me).expect_err("denied");
        assert!(e.0.contains("cannot read the input"), "{e}");
        assert!(e.0.contains("mode 0600"), "{e}");
        set(&p.input, 0o644);
        set(&outputs, 0o755);
        let e = check_access(&p, &me).expect_err("denied");
        assert!(e.0.contains("cannot write in the output folder"), "{e}");
        // A member of the folder's group may write where the group may.
        set(&outputs, 0o775);
        let member = RunAs {
            groups: vec![4242, std::fs::metadata(&outputs).expect("stat").gid()],
            ..me.clone()
        };
        check_access(&p, &member).expect("allowed through the group");
        set(&outputs, 0o777);
        check_access(&p, &me).expect("allowed");
        let root = RunAs {
            name: "root".into(),
            uid: 0,
            gid: 0,
            groups: vec![0],
        };
        set(&p.input, 0o000);
        check_access(&p, &root).expect("root reads anything");
    }
}
