#![doc = include_str!("../README.md")]
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod asynch;
pub mod blocking;
mod error;
mod greeting;
mod machine;
mod receive;
mod send;
#[cfg(feature = "std")]
pub mod std_io;
mod wire;

pub use error::{Error, Misuse};
pub use greeting::{Greeting, GreetingStep, CONNECTION_LIMIT_REFUSAL};
pub use machine::{FlushPolicy, Io, Machine, Moved, Step, Take};
pub use receive::{Receiver, RecvStep};
pub use send::{SendStep, Sender};
pub use wire::{Phase, Status, GREETING, LENGTH_FIELD_LEN, MAX_MESSAGE_LEN};

/// Counts `n` more bytes of a field of `owed` bytes (capped there); true
/// when the field is complete, with the count reset for the next one.
fn advance(moved: &mut u32, n: usize, owed: u32) -> bool {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    *moved = moved.saturating_add(n).min(owed);
    let complete = *moved == owed;
    if complete {
        *moved = 0;
    }
    complete
}

/// Re-exported so drivers' users name the same trait versions.
pub use embedded_io;
/// Re-exported so drivers' users name the same trait versions.
pub use embedded_io_async;
