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
pub use config::{Timeouts, DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_MESSAGE_LEN, DEFAULT_QUEUE_LEN};
pub use conn::{Conn, Handler};
pub use error::{Deadline, Error, ProtocolError};
#[cfg(feature = "zlib")]
pub use plugin::ZlibPlugin;
pub use plugin::{Plugin, PluginError};
pub use registry::{Connections, Context, StopHandle};
pub use server::{Server, ServerHooks};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}

    /// A server or client moves into the thread that runs it; handles are
    /// shared between threads.
    #[test]
    fn test_types_cross_threads() {
        assert_send::<Server>();
        assert_send::<Client>();
        assert_send::<Conn>();
        assert_send::<Error>();
        assert_send_sync::<Connections>();
        assert_send_sync::<StopHandle>();
        assert_send_sync::<Context>();
    }

    #[test]
    fn test_conn_id_display() {
        assert_eq!(ConnId(7).to_string(), "conn#7");
        assert_eq!(ConnId(7).as_u64(), 7);
    }
}
