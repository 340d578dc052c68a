#![doc = include_str!("../README.md")]
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod asynch;
pub mod blocking;
pub mod duplex;
mod error;
mod machine;
#[cfg(feature = "std")]
pub mod std_io;
mod wire;

pub use error::{Error, Misuse};
pub use machine::{FlushPolicy, Io, Machine, Moved, Operation, Step};
pub use wire::{
    zero_answer_is_a_length, Phase, Status, CONNECTION_LIMIT_REFUSAL, GREETING, LENGTH_FIELD_LEN,
    MAX_LENGTH_FIRST_BYTE, MAX_MESSAGE_LEN,
};

/// Re-exported so drivers' users name the same trait versions.
pub use embedded_io;
/// Re-exported so drivers' users name the same trait versions.
pub use embedded_io_async;
