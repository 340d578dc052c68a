//! Fuzz harnesses for tinyproto, shared by the cargo-fuzz targets in
//! `fuzz_targets/` and by `cargo test` (which replays the seed corpus on a
//! stable toolchain).
//!
//! Each harness takes the raw fuzzer input, derives its scenario with
//! `arbitrary`, and panics on any disagreement with a simple reference
//! model written here, independently of tinyproto's own machines.

pub mod receiver;
pub mod roundtrip;
pub mod script;
pub mod session;

/// The transport error the scripted transports inject: a stall that the
/// caller answers by calling the same operation again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall;

impl core::fmt::Display for Stall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("stall")
    }
}

impl core::error::Error for Stall {}

impl tinyproto::embedded_io::Error for Stall {
    fn kind(&self) -> tinyproto::embedded_io::ErrorKind {
        tinyproto::embedded_io::ErrorKind::TimedOut
    }
}

/// The driver error type of every harness.
pub type Error = tinyproto::Error<Stall>;

/// Upper bound on retries of one operation after stalls; each retry moves at
/// least one byte (a stall is never followed by another), so hitting this
/// means the driver no longer makes progress.
pub const MAX_RETRIES: usize = 1 << 20;
