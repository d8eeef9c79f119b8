//! `tracekit-sched dead list | requeue [ID|--all] | clear`: the dead-letter
//! list as something to act on (see `tracekit_proto::dead`).

use std::io::Write;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tracekit_proto::dead::MIN_ID_PREFIX;
use tracekit_proto::{DeadEntry, Keys};

use crate::redis_conn::RedisArgs;
use crate::task_label::TaskLabel;

/// Digits of a letter's id shown (any unique prefix of 4 or more works).
const SHOWN_ID: usize = 12;

#[derive(Args, Debug)]
pub struct DeadArgs {
    #[command(subcommand)]
    pub action: DeadAction,
}

/// The options every `dead` action takes.
#[derive(Args, Debug)]
pub struct Common {
    /// Name of the global pending list (where requeued tasks go).
    #[arg(long, default_value = "q:pending")]
    pub pending: String,

    #[command(flatten)]
    pub redis: RedisArgs,
}

#[derive(Subcommand, Debug)]
pub enum DeadAction {
    /// List dead letters, oldest first: id, attempts, node, task, input, reason.
    List {
        #[command(flatten)]
        common: Common,
        /// Print one JSON object per line instead.
        #[arg(long)]
        json: bool,
    },
    /// Put dead-lettered tasks back at the tail of pending, attempts reset.
    Requeue {
        #[command(flatten)]
        common: Common,
        /// The letter's id (a prefix of 4 or more hex digits, as `list` shows).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Requeue every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Drop every dead letter (they still count as dead in `status`).
    Clear {
        #[command(flatten)]
        common: Common,
    },
}

impl DeadAction {
    fn common(&self) -> &Common {
        match self {
            DeadAction::List { common, .. }
            | DeadAction::Requeue { common, .. }
            | DeadAction::Clear { common } => common,
        }
    }
}

/// Dead letters, one block each.
pub fn print_letters(out: &mut impl Write, letters: &[DeadEntry]) -> anyhow::Result<()> {
    for e in letters {
        let l = TaskLabel::of(&e.letter.task);
        writeln!(
            out,
            "{}  attempts {}  node {}  task {}  input {}",
            &e.id[..SHOWN_ID.min(e.id.len())],
            e.letter
                .attempts
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            e.letter.node.as_deref().unwrap_or("-"),
            l.id(),
            l.input.as_deref().unwrap_or("-"),
        )
        .context("writing the dead letters")?;
        for line in e.letter.reason.lines() {
            writeln!(out, "    {line}").context("writing the dead letters")?;
        }
    }
    Ok(())
}

pub async fn run(a: DeadArgs) -> anyhow::Result<()> {
    let common = a.action.common();
    let pending = common.pending.clone();
    let queue = common
        .redis
        .queue_once(Keys {
            pending: pending.clone(),
            ..Keys::default()
        })
        .await?;
    match a.action {
        DeadAction::List { json, .. } => {
            let letters = queue.dead_entries(0, -1).await?;
            let mut out = std::io::stdout().lock();
            if json {
                for e in &letters {
                    let l = TaskLabel::of(&e.letter.task);
                    let v = serde_json::json!({
                        "id": e.id, "reason": e.letter.reason, "attempts": e.letter.attempts,
                        "node": e.letter.node, "ts": e.letter.ts, "trace_id": l.trace_id,
                        "seq": l.seq, "input": l.input, "task": e.letter.task,
                    });
                    writeln!(out, "{v}").context("writing the dead letters")?;
                }
            } else {
                print_letters(&mut out, &letters)?;
                writeln!(out, "{} dead letter(s)", letters.len())
                    .context("writing the dead letters")?;
            }
        }
        DeadAction::Requeue { id, all, .. } => {
            let id = match (id, all) {
                (_, true) => None,
                (Some(id), false) => {
                    if id.len() < MIN_ID_PREFIX || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                        bail!(
                            "`{id}` is not a dead letter id: {MIN_ID_PREFIX} or more hex digits, as `tracekit-sched dead list` shows"
                        );
                    }
                    Some(id)
                }
                (None, false) => bail!("name a dead letter's id, or --all"),
            };
            let (requeued, matched) = queue.requeue_dead(id.as_deref()).await?;
            if let Some(id) = &id {
                match matched {
                    0 => bail!("no dead letter has the id {id}"),
                    1 => {}
                    n => bail!("{n} dead letters have ids starting with {id}: give more digits"),
                }
            }
            println!("requeued {requeued} task(s) at the tail of {}", pending);
        }
        DeadAction::Clear { .. } => {
            let n = queue.clear_dead().await?;
            println!("cleared {n} dead letter(s)");
        }
    }
    Ok(())
}
