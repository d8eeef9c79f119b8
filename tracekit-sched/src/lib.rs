//! Tracekit's controller: the central scheduler, the dispatcher and status.
//! The binary (`main.rs`) is a thin clap front end over these modules.

pub mod central;
pub mod dispatch;
pub mod gather;
pub mod mix;
pub mod profiles;
pub mod redis_conn;
pub mod status;
