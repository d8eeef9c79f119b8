//! The trace schema of Tracekit and everything that reads or writes it.
//!
//! One module per concept: [`schema`] holds the record types and file names,
//! [`node`] detects the host's description, [`writer`] appends records as a
//! run goes.

pub mod node;
pub mod schema;
pub mod writer;

pub use schema::*;
pub use writer::TraceWriter;
