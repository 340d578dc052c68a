#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Top-down: the server and the client share one loop (event_loop), which
// accepts (listen) and runs connection threads (pool) woken by the reactor;
// each runs the loop (conn_loop) of its handler over a Conn, which speaks
// the protocol over its transport. A server may serve its connections on
// event threads instead (events), each driving the core's machine over
// non-blocking sockets.
mod budget;
mod client;
mod config;
mod conn;
mod conn_loop;
mod connections;
mod duplex;
mod error;
mod event_loop;
pub mod events;
mod handler;
mod id;
mod listen;
mod plugin;
mod pool;
mod reactor;
mod server;
mod sleep;
#[cfg(feature = "tls")]
mod tls;
mod transport;

pub use budget::DEFAULT_MEMORY_BUDGET;
pub use client::Client;
pub use config::{Timeouts, DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_MESSAGE_LEN, DEFAULT_QUEUE_LEN};
pub use conn::Conn;
pub use connections::{Connections, Context, StopHandle};
pub use duplex::{Direction, Duplex};
pub use error::{Deadline, Error, ProtocolError};
pub use event_loop::Hooks;
pub use events::{EventConn, EventHandler};
pub use handler::{on_message, Handler, OnMessage, Take};
pub use id::ConnId;
#[cfg(feature = "zlib")]
pub use plugin::ZlibPlugin;
pub use plugin::{Plugin, PluginError};
/// Re-exported (feature `tls`): the TLS library, for its configurations.
#[cfg(feature = "tls")]
pub use rustls;
pub use server::Server;
#[cfg(feature = "tls")]
pub use tls::PeerIdentity;

/// Re-exported: the core crate.
pub use tinyproto;

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
