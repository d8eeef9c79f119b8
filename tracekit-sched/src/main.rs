//! `tracekit-sched`: the controller's commands.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("tracekit-sched: no command is implemented yet")
}
