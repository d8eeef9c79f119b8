//! Writing a command's output files all or nothing: every file is rendered
//! in memory first, written under a temporary name, and only when all are
//! written are they renamed into place.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Files to write into one directory.
#[derive(Debug, Default)]
pub struct OutputSet {
    files: Vec<(String, Vec<u8>)>,
}

impl OutputSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `name` with `body`.
    pub fn add(&mut self, name: &str, body: impl Into<Vec<u8>>) {
        self.files.push((name.to_string(), body.into()));
    }

    /// Total bytes.
    pub fn bytes(&self) -> usize {
        self.files.iter().map(|(_, b)| b.len()).sum()
    }

    /// Write every file into `dir` (created if needed); returns their paths.
    /// A failure before the renames removes the temporary files and leaves
    /// `dir` as it was.
    pub fn commit(self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating output directory {}", dir.display()))?;
        let mut written: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(self.files.len());
        for (name, body) in &self.files {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            if let Err(e) = std::fs::write(&tmp, body) {
                let _ = std::fs::remove_file(&tmp);
                for (t, _) in &written {
                    let _ = std::fs::remove_file(t);
                }
                return Err(e).with_context(|| format!("writing {}", tmp.display()));
            }
            written.push((tmp, path));
        }
        let mut paths = Vec::with_capacity(written.len());
        for (tmp, path) in written {
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
            paths.push(path);
        }
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_all_files_and_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        let mut set = OutputSet::new();
        set.add("a.txt", "a");
        set.add("b.txt", b"bb".to_vec());
        assert_eq!(set.bytes(), 3);
        let paths = set.commit(&out).unwrap();
        assert_eq!(paths.len(), 2);
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.txt", "b.txt"]);
    }
}
