//! `tracekit-sched gather`: write every node's published trace directory of
//! a run under `<out>/<RUN_ID>/<node>/` (see `tracekit_proto::gather`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::progress::Progress;
use crate::redis_conn::RedisArgs;

#[derive(Debug, Args)]
pub struct GatherArgs {
    /// The run to gather (default: the last run started with `run start`).
    #[arg(long, env = "RUN_ID")]
    pub run_id: Option<String>,
    /// Directory that receives <RUN_ID>/<node>/.
    #[arg(long, default_value = "logs")]
    pub out: PathBuf,

    #[command(flatten)]
    pub redis: RedisArgs,
}

pub async fn run(args: GatherArgs) -> Result<()> {
    let conn = args.redis.connect_once().await?;
    let run_id = match args.run_id {
        Some(id) => id,
        None => tracekit_proto::Queue::new(conn.clone(), tracekit_proto::Keys::default())
            .last_run()
            .await?
            .context("which run? --run-id (or RUN_ID): no run was started with `tracekit-sched run start`")?,
    };
    let mut progress = Progress::new("nodes gathered", 0);
    let gathered =
        tracekit_proto::gather::gather_with(&conn, &run_id, &args.out, |done, total, g| {
            progress.update(done as u64, total as u64, &g.node);
        })
        .await?;
    progress.finish();
    for g in &gathered {
        println!("{}: {} file(s), {} bytes", g.node, g.files, g.bytes);
    }
    println!(
        "gathered {} node(s) of run {} into {}",
        gathered.len(),
        run_id,
        args.out.join(&run_id).display()
    );
    Ok(())
}
