//! The contract between floodwall's XDP program and its controller: map names, key and value
//! layouts, reason codes, the live configuration record and the limiter math. Every type that
//! crosses the kernel boundary is `#[repr(C)]`, has no implicit padding and a size assertion.
#![no_std]

pub mod limiter;
pub mod maps;
pub mod pktgen;
pub mod reason;
pub mod syn;

pub use limiter::{Bucket, byte_cost, gcra};
pub use maps::*;
pub use pktgen::PktgenConfig;
pub use reason::Reason;
