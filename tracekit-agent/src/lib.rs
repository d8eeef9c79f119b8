//! Tracekit's node agent as a library: the eBPF tracer, the process table
//! that turns its events into trace lines, and the worker. The binary
//! (`main.rs`) is its command line; tests drive the worker in-process.
//!
//! Where to start reading: [`table`] (pure: events in, trace lines out),
//! [`tracer`] (the collectors that produce the events), [`session`] (a
//! collector, the table and the writer, driven by a loop), then the two
//! loops: [`trace_cmd`] (trace only) and [`worker`].

/// This agent's version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TRACEKIT_COMMIT"),
    ")"
);

pub mod cli;
pub mod clock;
pub mod matcher;
pub mod session;
pub mod signals;
pub mod sys;
pub mod table;
pub mod ticker;
pub mod trace_cmd;
pub mod tracer;
pub mod worker;
