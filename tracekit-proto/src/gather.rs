//! Gathering a run's traces through Redis: each agent publishes its finished
//! node directory, and the controller's `gather` writes every node's
//! directory under one `logs/<RUN_ID>/<node>/` — no scp, no shared file
//! system. Files are checksummed (SHA-256) and a run id never mixes with
//! another.
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `trace:<run>:nodes` | set | nodes that published a directory for run `<run>` |
//! | `trace:<run>:<node>` | hash | file path (relative) → bytes, and `_manifest` → JSON [`Manifest`] |
//!
//! A publication is one MULTI/EXEC transaction, so a reader sees a node's
//! directory whole or not at all; publishing again replaces it.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::conn::RedisConn;

/// The hash field that holds the manifest.
const MANIFEST: &str = "_manifest";

/// Set of the nodes that published run `run`.
pub fn nodes_key(run: &str) -> String {
    format!("trace:{run}:nodes")
}

/// Hash of node `node`'s files in run `run`.
pub fn node_key(run: &str, node: &str) -> String {
    format!("trace:{run}:{node}")
}

/// What a publication holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub node: String,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Relative paths of every regular file under `dir`, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(dir)
                    .context("a file under the node directory")?
                    .to_path_buf();
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a [`publish`] failed on Redis (worth retrying), not on the files.
pub fn failed_on_redis(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<redis::RedisError>())
}

/// Publish node directory `dir` of run `run` for node `node`.
pub async fn publish(conn: &RedisConn, run: &str, node: &str, dir: &Path) -> Result<Manifest> {
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    let mut files = Vec::new();
    for rel in files_under(dir)? {
        let data = std::fs::read(dir.join(&rel))
            .with_context(|| format!("reading {}", dir.join(&rel).display()))?;
        let path = rel.to_string_lossy().into_owned();
        files.push(FileEntry {
            path: path.clone(),
            bytes: data.len() as u64,
            sha256: sha256_hex(&data),
        });
        fields.push((path, data));
    }
    let manifest = Manifest {
        run_id: run.to_string(),
        node: node.to_string(),
        files,
    };
    fields.push((MANIFEST.to_string(), serde_json::to_vec(&manifest)?));
    let (hash, set) = (node_key(run, node), nodes_key(run));
    // A stopped run's `run stop` waits for this publication.
    let waiting = crate::keys::run_waiting(run);
    conn.run("publishing traces", |mut c| {
        let (hash, set, waiting, fields, node) = (
            hash.clone(),
            set.clone(),
            waiting.clone(),
            fields.clone(),
            node.to_string(),
        );
        async move {
            let mut pipe = redis::pipe();
            pipe.atomic().del(&hash).ignore();
            pipe.hset_multiple(&hash, &fields).ignore();
            pipe.sadd(&set, &node).ignore();
            pipe.srem(&waiting, &node).ignore();
            pipe.query_async::<()>(&mut c).await
        }
    })
    .await
    .context("publishing the node's traces to Redis")?;
    Ok(manifest)
}

/// One gathered node.
#[derive(Debug, Clone)]
pub struct Gathered {
    pub node: String,
    pub files: usize,
    pub bytes: u64,
}

/// Write every published node directory of run `run` under `out/<run>/<node>/`.
/// Refuses a manifest of another run, a checksum mismatch, a path that would
/// leave the node directory, and a node directory that already holds another
/// run's traces.
pub async fn gather(conn: &RedisConn, run: &str, out: &Path) -> Result<Vec<Gathered>> {
    gather_with(conn, run, out, |_, _, _| {}).await
}

/// [`gather`], calling `on_node(done, total, node)` after each node is written
/// (for a progress display).
pub async fn gather_with(
    conn: &RedisConn,
    run: &str,
    out: &Path,
    mut on_node: impl FnMut(usize, usize, &Gathered),
) -> Result<Vec<Gathered>> {
    let set = nodes_key(run);
    let mut nodes: Vec<String> = conn
        .run("listing published nodes", |mut c| {
            let set = set.clone();
            async move { c.smembers(&set).await }
        })
        .await
        .context("listing published nodes")?;
    nodes.sort();
    if nodes.is_empty() {
        bail!("no node has published traces for run {run}");
    }
    let mut gathered = Vec::new();
    let total = nodes.len();
    for node in nodes {
        let hash = node_key(run, &node);
        let fields: Vec<(String, Vec<u8>)> = conn
            .run("reading a node's traces", |mut c| {
                let hash = hash.clone();
                async move { c.hgetall(&hash).await }
            })
            .await
            .with_context(|| format!("reading {hash}"))?;
        let g = write_node(run, &node, fields, out)?;
        on_node(gathered.len() + 1, total, &g);
        gathered.push(g);
    }
    Ok(gathered)
}

fn write_node(
    run: &str,
    node: &str,
    fields: Vec<(String, Vec<u8>)>,
    out: &Path,
) -> Result<Gathered> {
    let mut map: std::collections::HashMap<String, Vec<u8>> = fields.into_iter().collect();
    let raw = map
        .remove(MANIFEST)
        .with_context(|| format!("node {node} of run {run} has no manifest"))?;
    let manifest: Manifest = serde_json::from_slice(&raw)
        .with_context(|| format!("node {node}'s manifest is not valid JSON"))?;
    if manifest.run_id != run || manifest.node != node {
        bail!(
            "refusing to mix runs: node {node} published run {} (node {}), not {run}",
            manifest.run_id,
            manifest.node
        );
    }
    if !safe_component(node) {
        bail!("node name {node:?} cannot be a directory name");
    }
    let dir = out.join(run).join(node);
    let meta = dir.join("node_meta.json");
    if let Ok(text) = std::fs::read_to_string(&meta) {
        let existing: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if existing["run_id"].as_str().is_some_and(|r| r != run) {
            bail!(
                "refusing to mix runs: {} holds run {}",
                dir.display(),
                existing["run_id"]
            );
        }
    }
    let mut bytes = 0;
    for f in &manifest.files {
        let rel = Path::new(&f.path);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            bail!("node {node}: unsafe path {:?} in the manifest", f.path);
        }
        let data = map.get(&f.path).with_context(|| {
            format!(
                "node {node}: {} is in the manifest but not published",
                f.path
            )
        })?;
        if sha256_hex(data) != f.sha256 || data.len() as u64 != f.bytes {
            bail!("node {node}: {} does not match its checksum", f.path);
        }
        let target = dir.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, data).with_context(|| format!("writing {}", target.display()))?;
        bytes += f.bytes;
    }
    Ok(Gathered {
        node: node.to_string(),
        files: manifest.files.len(),
        bytes,
    })
}

fn safe_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    fn node_dir(root: &Path, run: &str) -> PathBuf {
        let dir = root.join("src");
        std::fs::create_dir_all(dir.join("CTS")).expect("mkdir");
        std::fs::write(
            dir.join("node_meta.json"),
            format!("{{\"run_id\":\"{run}\"}}"),
        )
        .expect("w");
        std::fs::write(dir.join("CTS/invocations.jsonl"), "{\"pid\":1}\n").expect("w");
        dir
    }

    #[tokio::test]
    async fn publishes_and_gathers_checksummed() {
        let redis = RedisServer::start().expect("redis");
        let conn = redis.conn().await.expect("conn");
        let tmp = tempfile::tempdir().expect("tmp");
        let src = node_dir(tmp.path(), "r1");
        for node in ["n1", "n2"] {
            let m = publish(&conn, "r1", node, &src).await.expect("publish");
            assert_eq!(m.files.len(), 2);
        }
        let out = tmp.path().join("logs");
        let got = gather(&conn, "r1", &out).await.expect("gather");
        assert_eq!(
            got.iter().map(|g| g.node.as_str()).collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        for node in ["n1", "n2"] {
            let text =
                std::fs::read_to_string(out.join("r1").join(node).join("CTS/invocations.jsonl"))
                    .expect("gathered");
            assert_eq!(text, "{\"pid\":1}\n");
        }
        // Another run's name is refused, as is an unknown run.
        let e = gather(&conn, "r2", &out)
            .await
            .expect_err("nothing published");
        assert!(format!("{e:#}").contains("no node"));
    }

    #[tokio::test]
    async fn refuses_mixed_runs_and_bad_checksums() {
        let redis = RedisServer::start().expect("redis");
        let conn = redis.conn().await.expect("conn");
        let tmp = tempfile::tempdir().expect("tmp");
        let src = node_dir(tmp.path(), "r1");
        publish(&conn, "r1", "n1", &src).await.expect("publish");
        let mut c = conn.manager();
        // A corrupted file.
        let _: () = c
            .hset(node_key("r1", "n1"), "CTS/invocations.jsonl", "tampered")
            .await
            .expect("hset");
        let e = gather(&conn, "r1", &tmp.path().join("out"))
            .await
            .expect_err("checksum");
        assert!(format!("{e:#}").contains("checksum"), "{e:#}");
        // A manifest of another run under this run's key.
        publish(&conn, "r9", "n1", &src).await.expect("publish");
        let other: Vec<u8> = c.hget(node_key("r9", "n1"), MANIFEST).await.expect("hget");
        let _: () = c
            .hset(node_key("r1", "n1"), MANIFEST, other)
            .await
            .expect("hset");
        let e = gather(&conn, "r1", &tmp.path().join("out2"))
            .await
            .expect_err("mixed");
        assert!(format!("{e:#}").contains("refusing to mix runs"), "{e:#}");
        // An output directory that holds another run.
        publish(&conn, "r1", "n1", &src).await.expect("publish");
        let out = tmp.path().join("out3");
        std::fs::create_dir_all(out.join("r1/n1")).expect("mkdir");
        std::fs::write(out.join("r1/n1/node_meta.json"), "{\"run_id\":\"r0\"}").expect("w");
        let e = gather(&conn, "r1", &out)
            .await
            .expect_err("existing other run");
        assert!(format!("{e:#}").contains("refusing to mix runs"), "{e:#}");
    }
}
