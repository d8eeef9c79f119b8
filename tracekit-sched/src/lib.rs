//! Tracekit's controller: the central scheduler, the dispatcher and status,
//! and the run's report and its comparison with an OpenDC simulation. The
//! binary (`main.rs`) is a thin clap front end over these modules.

pub mod central;
pub mod compare;
pub mod dead;
pub mod dispatch;
pub mod fmt;
pub mod gather;
pub mod mix;
pub mod output;
pub mod profiles;
pub mod progress;
pub mod py_random;
pub mod redis_conn;
pub mod report;
pub mod run;
pub mod stats;
pub mod status;
pub mod svg;
pub mod task_label;
pub mod wait;
