//! The trace schema of Tracekit and everything that reads or writes it.
//!
//! One module per concept: [`schema`] holds the record types and file names,
//! [`node`] detects the host's description, [`writer`] appends records as a
//! run goes, [`reader`] reads node and run directories back tolerantly
//! ([`sample_line`] parses the samples' lines),
//! [`join`] matches samples to tasks, [`clock`] measures a host's clock
//! against Redis and puts a trace's times on Redis's clock, [`audit`] checks a trace and renders
//! `audit_report.md`, [`opendc`] and [`export`] turn traces into an OpenDC
//! workload, [`cli`] is the command-line surface of audit and export, and
//! [`synth`] writes synthetic traces with known truth for tests and benchmarks.

pub mod audit;
#[cfg(feature = "export")]
pub mod cli;
pub mod clock;
#[cfg(feature = "export")]
pub mod export;
pub mod join;
pub mod node;
#[cfg(feature = "export")]
pub mod opendc;
pub mod reader;
pub mod sample_line;
pub mod schema;
pub mod synth;
pub mod writer;

pub use audit::{AuditSummary, NodeAudit, audit};
#[cfg(feature = "export")]
pub use export::{ExportOptions, ExportReport, TaskIdMode, export_opendc, export_opendc_with};
pub use schema::*;
pub use writer::TraceWriter;
