#![doc = include_str!("../README.md")]
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod asynch;
pub mod blocking;
mod error;
mod greeting;
mod receive;
mod send;
mod wire;

pub use error::Error;
pub use greeting::{Greeting, GreetingStep, CONNECTION_LIMIT_REFUSAL};
pub use receive::{Receiver, RecvStep};
pub use send::{SendStep, Sender};
pub use wire::{Phase, Status, GREETING, LENGTH_FIELD_LEN, MAX_MESSAGE_LEN};

/// Re-exported so drivers' users name the same trait versions.
pub use embedded_io;
/// Re-exported so drivers' users name the same trait versions.
pub use embedded_io_async;
