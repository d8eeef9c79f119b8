//! Tracekit's kernel program and the ABI it shares with user space.
//!
//! The kernel side is C with CO-RE (`bpf/tracekit.bpf.c`); the ABI is defined
//! once in `bpf/tracekit.h`, and its Rust types and constants are generated
//! from it at build time (`build.rs`). A test compiles the header with the
//! host C compiler and checks every size and offset against the generated
//! types; another (in the agent) checks that every map and program the agent
//! opens is in the compiled object.
#![cfg_attr(not(any(feature = "user", feature = "build", test)), no_std)]

pub mod abi;
#[cfg(feature = "build")]
pub mod build;

pub use abi::*;
