//! The [`Server`]: listeners, its connections (a thread each, or the event
//! threads), the connection limit, the graceful stop; its loop and hooks
//! are the client's too (`event_loop`).

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use crate::config::shared_methods;
use crate::event_loop::Runner;
use crate::listen::raise_open_file_limit;

/// A threaded tinyproto server (the reference's `TinyProtoServer`).
///
/// ```no_run
/// use tinyproto_std::{Conn, Error, Handler, Server};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
///         conn.transmit(msg)
///     }
/// }
///
/// let mut server = Server::new();
/// let addr = server.add_addr("127.0.0.1:0")?;
/// server.set_conn_handler(|| Echo);
/// let stop = server.stop_handle();
/// let thread = std::thread::spawn(move || server.start());
/// // ... connect to `addr` ...
/// stop.stop();
/// thread.join().unwrap()?;
/// # let _ = addr; Ok::<(), std::io::Error>(())
/// ```
pub struct Server {
    runner: Runner,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.runner.listeners)
            .field("cfg", &self.runner.settings.conn)
            .field("limit", &self.runner.limit)
            .field("drain_timeout", &self.runner.settings.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with no address, the do-nothing handler `()`, no hooks, no
    /// connection limit and default [`Timeouts`](crate::Timeouts).
    pub fn new() -> Self {
        Self {
            runner: Runner::new(),
        }
    }

    /// Listens on `addr` (IPv4 or IPv6; port 0 picks a free port) and
    /// returns the address actually bound. May be called several times.
    pub fn add_addr(&mut self, addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        log::info!("listening on {local}");
        self.runner.listeners.push(listener);
        Ok(local)
    }

    /// Makes every connection half of a [`Duplex`](crate::Duplex) link
    /// (clients connect with [`Client::connect_duplex`](crate::Client::connect_duplex)):
    /// one connection per direction, so that both sides send whenever they
    /// like and no message crosses another. Each connection must open with
    /// its hello (others end with [`Error::NotDuplex`](crate::Error::NotDuplex)),
    /// nothing is sent on it before, nothing ever on an up half, and
    /// [`Connections::send_to`](crate::Connections::send_to) and
    /// [`broadcast`](crate::Connections::broadcast) go to down halves (a
    /// message for an up half's id goes to its pair). Handlers see which
    /// half they run on with [`Conn::direction`](crate::Conn::direction).
    /// Default `false`.
    pub fn set_duplex(&mut self, duplex: bool) {
        self.runner.settings.conn.duplex = duplex;
    }

    /// Runs every connection in TLS with `config` (feature `tls`): its
    /// certificate and key, and whether clients must present certificates
    /// of their own (mutual TLS: a `rustls::server::WebPkiClientVerifier`).
    /// The handshake is part of the greeting, within its deadline; handlers
    /// see the client's identity with [`Conn::peer_identity`](crate::Conn::peer_identity)
    /// (a `pre_loop` that returns an error refuses the connection). A
    /// handshake that fails ends the connection with [`Error::Tls`](crate::Error::Tls).
    #[cfg(feature = "tls")]
    pub fn set_tls(&mut self, config: std::sync::Arc<rustls::ServerConfig>) {
        self.runner.settings.conn.tls = Some(crate::tls::TlsSide::Server(config));
    }

    /// The addresses listened on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.runner.context().local_addrs
    }

    /// At most `limit` connections at once (`None`: no limit). A connection
    /// past it is answered the single byte 0xFE and closed.
    pub fn set_connection_limit(&mut self, limit: Option<usize>) {
        self.runner.limit = limit;
    }

    shared_methods!();

    /// Runs the server until stopped: accepts connections, runs a thread per
    /// connection (or serves them on the event threads, with an
    /// [`set_event_handler`](Self::set_event_handler) handler), then stops
    /// gracefully (no new accepts; connections
    /// finish the message in flight and end, their `post_loop` and
    /// `conn_shutdown` run; after the drain timeout the rest are closed).
    /// Sleeps in between: accepting is immediate, nothing polls.
    ///
    /// Fails at once if no address was added.
    pub fn start(&mut self) -> io::Result<()> {
        if self.runner.listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no address to listen on (call add_addr)",
            ));
        }
        raise_open_file_limit();
        let Runner {
            listeners, pool, ..
        } = &mut self.runner;
        for (index, listener) in listeners.iter().enumerate() {
            listener.set_nonblocking(true)?;
            pool.reactor()?.add_listener(index, listener)?;
        }
        self.runner.run();
        Ok(())
    }
}
