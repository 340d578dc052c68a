#![doc = include_str!("../README.md")]
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Must come first: the macros are used by the modules below.
#[macro_use]
mod fmt;

mod client;
mod error;
mod out_of_line;
mod server;
mod session;
mod socket;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

pub use client::Client;
pub use error::{Deadline, Error, NetError};
pub use server::{
    serve, serve_until, Ended, Flow, Handler, Reserve, ReserveStorage, ServerConfig, Slot,
    SlotStorage, Take,
};
pub use session::{ConnInfo, Session};
pub use socket::{Socket, Timeouts};
pub use transport::Transport;

/// The core's async connection over a [`Socket`].
pub type Connection<'a> = tinyproto::asynch::Connection<Socket<'a>>;

/// Re-exported so users name the same versions.
pub use embassy_net;
pub use tinyproto;
