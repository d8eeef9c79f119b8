//! The worker's link to Redis: taking tasks ([`intake`]), heartbeats
//! ([`heartbeat`]) and reports ([`reporter`]) each run in their own task and
//! retry through outages, so the loop never blocks on Redis, running tasks go
//! on, and completions are reported when Redis is back.

use std::time::Duration;

use tokio::sync::mpsc;
use tracekit_proto::{Heartbeat, Queue, Registration, Take};

/// What happens to a task in flight, reported in order by [`reporter`].
#[derive(Debug)]
pub enum Report {
    Complete(String),
    Requeue {
        raw: String,
        failed: bool,
        /// Why the attempt failed, kept for the dead letter.
        reason: Option<String>,
    },
    DeadLetter {
        raw: String,
        reason: String,
    },
}

/// Takes tasks from the node's queue into its in-flight list, one at a time,
/// and hands them to the loop. Its own task: a take is never cancelled
/// half-way (which could strand a task in flight).
pub async fn intake(
    queue: Queue,
    node: String,
    tasks: mpsc::Sender<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        match queue
            .take_task_wait(&node, Duration::from_millis(500))
            .await
        {
            Ok(Take::Task(raw)) => {
                if tasks.send(raw).await.is_err() {
                    return;
                }
            }
            Ok(Take::Empty) => {}
            Ok(Take::Lost) => {
                // The heartbeat task re-registers; wait for it.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) => {
                tracing::warn!("taking a task: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// Heartbeats while the agent lives; re-registers if the node was declared
/// dead (its work was taken back meanwhile).
pub async fn heartbeat(
    queue: Queue,
    registration: Registration,
    period: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        match queue.heartbeat(&registration.node).await {
            Ok(Heartbeat::Alive) => {}
            Ok(Heartbeat::Lost) if !*stop.borrow() => {
                tracing::warn!("this node was declared dead: registering again");
                let again = Registration {
                    reset_capacity: false,
                    clear_queue: false,
                    ..registration.clone()
                };
                if let Err(e) = queue.register(&again).await {
                    tracing::warn!("registering again: {e}");
                }
            }
            Ok(Heartbeat::Lost) => {}
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
    }
}

/// Delivers reports in order, retrying through Redis outages until each is
/// applied; ends when the loop is gone and everything is delivered.
pub async fn reporter(queue: Queue, node: String, mut reports: mpsc::UnboundedReceiver<Report>) {
    while let Some(report) = reports.recv().await {
        let mut delay = Duration::from_millis(100);
        loop {
            let result = match &report {
                Report::Complete(raw) => queue.complete_task(&node, raw).await,
                Report::Requeue {
                    raw,
                    failed,
                    reason,
                } => {
                    queue
                        .requeue_task(&node, raw, *failed, reason.as_deref())
                        .await
                }
                Report::DeadLetter { raw, reason } => {
                    queue.dead_letter_task(&node, raw, reason).await
                }
            };
            match result {
                Ok(true) => break,
                Ok(false) => {
                    tracing::warn!(
                        ?report,
                        "the task was no longer in flight (node declared dead meanwhile)"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!("reporting to Redis (will retry): {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
