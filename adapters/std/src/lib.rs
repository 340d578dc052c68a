//! Threaded tinyproto server and client for `std`, with the lifecycle hooks
//! of the reference Python package (`tinyproto` 3.0), built on the core's
//! blocking driver ([`tinyproto::blocking::Connection`]).
//!
//! - [`Server`]: listens on several addresses, one thread per connection,
//!   a [`Handler`] per connection (`pre_loop`, `loop_pass`,
//!   `transmission_received`, `post_loop`), [`ServerHooks`], a registry of
//!   [`Connections`], a connection limit (0xFE past it), graceful stop.
//! - [`Client`]: plain synchronous [`Conn`]s, or handler-driven connections
//!   with an optional client loop ([`ClientHooks`]).
//! - [`Plugin`]s transform messages (the reference's `TinyProtoPlugin`);
//!   [`ZlibPlugin`] compresses them.
//! - Every wait is bounded by [`Timeouts`]; `TCP_NODELAY` is on by default;
//!   logging goes through the `log` facade only.
//!
//! # Quickstart
//! ```no_run
//! use tinyproto_std::{Client, Conn, Error, Handler, Server};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn transmission_received(&mut self, conn: &mut Conn, msg: Vec<u8>) -> Result<(), Error> {
//!         conn.transmit(&msg)
//!     }
//! }
//!
//! let mut server = Server::new();
//! let addr = server.add_addr("127.0.0.1:0")?;
//! server.set_conn_handler(|| Echo);
//! let stop = server.stop_handle();
//! let thread = std::thread::spawn(move || server.start());
//!
//! let mut conn = Client::new().connect(addr)?;
//! conn.transmit(b"hello")?;
//! assert_eq!(conn.receive()?, b"hello");
//! conn.close();
//!
//! stop.stop();
//! thread.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Bad input
//! A length over the limit is answered 0x00 and the connection goes on. A
//! wrong greeting byte, an unexpected status byte, a close mid-message or
//! a deadline ends that connection with a typed [`Error`] (its `post_loop`
//! sees it); no partial message is ever delivered, and everyone else is
//! served on. The buffer of an incoming message grows only as its bytes
//! arrive, up to [`DEFAULT_MAX_MESSAGE_LEN`] unless configured otherwise.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod config;
mod conn;
mod error;
mod io;
mod plugin;
mod registry;
mod server;

use std::fmt;

pub use client::{Client, ClientHooks};
pub use config::{Timeouts, DEFAULT_MAX_MESSAGE_LEN, DEFAULT_QUEUE_LEN};
pub use conn::{Conn, Handler};
pub use error::{Deadline, Error, ProtocolError};
#[cfg(feature = "zlib")]
pub use plugin::ZlibPlugin;
pub use plugin::{Plugin, PluginError};
pub use registry::{Connections, Context, StopHandle};
pub use server::{Server, ServerHooks, DEFAULT_DRAIN_TIMEOUT};

/// Re-exported: the core crate.
pub use tinyproto;

/// The id of a connection, unique within its server or client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// The number behind the id.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}
