//! Transcoding profiles: the built-in ones of SPEC.md (with the original's
//! aliases) plus any loaded from a JSON or TOML file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Task fields a profile sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub scale: String,
    pub vcodec: String,
    pub preset: String,
    pub crf: i64,
    pub vthreads: i64,
    pub fthreads: i64,
    pub cpu_units: i64,
}

fn p(scale: &str, vcodec: &str, preset: &str, crf: i64, vt: i64, ft: i64, units: i64) -> Profile {
    Profile {
        scale: scale.into(),
        vcodec: vcodec.into(),
        preset: preset.into(),
        crf,
        vthreads: vt,
        fthreads: ft,
        cpu_units: units,
    }
}

/// Known profiles by lower-case name (aliases included).
#[derive(Debug, Clone)]
pub struct Profiles {
    by_name: BTreeMap<String, Profile>,
}

impl Profiles {
    pub fn builtin() -> Profiles {
        let light = p("854:480", "h264", "veryfast", 28, 1, 1, 1);
        let by_name = BTreeMap::from([
            (
                "fast1080p".into(),
                p("1920:1080", "h264", "fast", 28, 2, 2, 2),
            ),
            (
                "medium480p".into(),
                p("854:480", "h264", "medium", 28, 2, 2, 2),
            ),
            (
                "hevc1080p".into(),
                p("1920:1080", "hevc", "medium", 28, 4, 4, 4),
            ),
            ("light1c".into(), light.clone()),
            ("light480p1c".into(), light.clone()),
            ("light_1c".into(), light),
        ]);
        Profiles { by_name }
    }

    /// Adds (or overrides) profiles from a file: a map name → profile, JSON
    /// (`{"x": {"scale": "1280:720", …}}`) or TOML (`[x]` tables), chosen by
    /// the `.toml` extension. Every profile is validated.
    pub fn load_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading profiles file {}", path.display()))?;
        let map: BTreeMap<String, Profile> = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text)
                .with_context(|| format!("parsing TOML profiles {}", path.display()))?
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("parsing JSON profiles {}", path.display()))?
        };
        for (name, prof) in map {
            validate(&name, &prof)
                .with_context(|| format!("profile `{name}` in {}", path.display()))?;
            self.by_name.insert(name.trim().to_ascii_lowercase(), prof);
        }
        Ok(())
    }

    /// The profile called `name` (case-insensitive); an unknown name is an
    /// error listing the known ones.
    pub fn get(&self, name: &str) -> anyhow::Result<&Profile> {
        let key = name.trim().to_ascii_lowercase();
        match self.by_name.get(&key) {
            Some(p) => Ok(p),
            None => bail!(
                "unknown profile `{name}`; known profiles: {}",
                self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

fn validate(name: &str, p: &Profile) -> anyhow::Result<()> {
    let t = tracekit_proto::Task {
        input: "x".into(),
        output: "y".into(),
        scale: Some(p.scale.clone()),
        vcodec: Some(p.vcodec.clone()),
        preset: Some(p.preset.clone()),
        crf: Some(p.crf),
        vthreads: Some(p.vthreads),
        fthreads: Some(p.fthreads),
        cpu_units: Some(p.cpu_units),
        seq: None,
        ts_enqueue: None,
        ts_enqueue_offset_ms: None,
        cpuset: None,
        cpu_quota: None,
        cpu_weight: None,
        trace_id: None,
        profile: None,
        extra: Default::default(),
    };
    t.validate().map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_match_the_spec() {
        let ps = Profiles::builtin();
        assert_eq!(
            ps.get("fast1080p").unwrap(),
            &p("1920:1080", "h264", "fast", 28, 2, 2, 2)
        );
        assert_eq!(
            ps.get("medium480p").unwrap(),
            &p("854:480", "h264", "medium", 28, 2, 2, 2)
        );
        assert_eq!(
            ps.get("HEVC1080p").unwrap(),
            &p("1920:1080", "hevc", "medium", 28, 4, 4, 4)
        );
        for alias in ["light1c", "light480p1c", "light_1c"] {
            assert_eq!(
                ps.get(alias).unwrap(),
                &p("854:480", "h264", "veryfast", 28, 1, 1, 1)
            );
        }
    }

    #[test]
    fn unknown_profile_names_the_known_ones() {
        let err = Profiles::builtin().get("ultra4k").unwrap_err().to_string();
        assert!(
            err.contains("ultra4k") && err.contains("fast1080p") && err.contains("light_1c"),
            "{err}"
        );
    }

    #[test]
    fn loads_json_and_toml() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("p.json");
        std::fs::write(&j, r#"{"hd": {"scale":"1280:720","vcodec":"h264","preset":"slow","crf":23,"vthreads":2,"fthreads":1,"cpu_units":2}}"#).unwrap();
        let t = dir.path().join("p.toml");
        std::fs::write(&t, "[uhd]\nscale = \"3840:2160\"\nvcodec = \"h265\"\npreset = \"fast\"\ncrf = 30\nvthreads = 8\nfthreads = 8\ncpu_units = 8\n").unwrap();
        let mut ps = Profiles::builtin();
        ps.load_file(&j).unwrap();
        ps.load_file(&t).unwrap();
        assert_eq!(ps.get("hd").unwrap().preset, "slow");
        assert_eq!(ps.get("uhd").unwrap().cpu_units, 8);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"x": {"scale":"big","vcodec":"h264","preset":"slow","crf":23,"vthreads":2,"fthreads":1,"cpu_units":2}}"#).unwrap();
        assert!(ps.load_file(&bad).is_err());
    }
}
