#![doc = include_str!("../README.md")]
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
