//! The [`Client`]: plain synchronous connections, or connections run by a
//! handler on threads of their own, with an optional client loop (the
//! server's loop, without listeners: `event_loop`).

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::config::shared_methods;
use crate::conn::Conn;
use crate::duplex::Duplex;
use crate::error::{Deadline, Error};
use crate::event_loop::{Handlers, Runner};
use crate::id::ConnId;

/// A tinyproto client (the reference's `TinyProtoClient`).
///
/// Plain synchronous use, without any loop or thread:
///
/// ```no_run
/// let client = tinyproto_std::Client::new();
/// let mut conn = client.connect("127.0.0.1:7000")?;
/// conn.transmit(b"hello")?;
/// let reply = conn.receive()?;
/// conn.close();
/// # let _ = reply; Ok::<(), tinyproto_std::Error>(())
/// ```
///
/// With a handler: [`connect_to`](Self::connect_to) runs each connection's
/// loop on a thread of its own, and [`start`](Self::start) runs the
/// optional client loop with [`Hooks`](crate::Hooks).
pub struct Client {
    runner: Runner,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cfg", &self.runner.settings.conn)
            .field("drain_timeout", &self.runner.settings.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with the do-nothing handler `()`, no hooks and default
    /// [`Timeouts`](crate::Timeouts).
    pub fn new() -> Self {
        Self {
            runner: Runner::new(),
        }
    }

    /// Runs every connection in TLS with `config` (feature `tls`: its
    /// trusted roots, and its own certificate for a server that asks for
    /// one); the server's certificate must be valid for `server_name`. The
    /// handshake is part of the greeting, within its deadline; a failure is
    /// [`Error::Tls`].
    #[cfg(feature = "tls")]
    pub fn set_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) {
        self.runner.settings.conn.tls = Some(crate::tls::TlsSide::Client(config, server_name));
    }

    /// Like the reference's `timeout`: sets the connect, greeting and
    /// receive time limits to `timeout` (see [`Timeouts`](crate::Timeouts)).
    pub fn set_timeout(&mut self, timeout: Duration) {
        let t = &mut self.runner.settings.conn.timeouts;
        t.connect = timeout;
        t.greeting = timeout;
        t.receive = timeout;
    }

    shared_methods!();

    /// Connects and exchanges the greeting, for plain synchronous use: the
    /// returned connection runs no loop and no handler.
    /// `Error::Protocol(tinyproto::Error::ConnectionLimit)` when the server
    /// is full.
    pub fn connect(&self, addr: impl ToSocketAddrs) -> Result<Conn, Error> {
        let (stream, peer) = self.open(addr)?;
        let cfg = Arc::new(self.runner.settings.conn.clone());
        let mut conn = self.runner.new_conn(stream, peer, cfg)?;
        conn.greet()?;
        log::debug!("{}: connected to {}", conn.id(), conn.peer_addr());
        Ok(conn)
    }

    /// Opens a [`Duplex`] link to a duplex server
    /// ([`Server::set_duplex`](crate::Server::set_duplex)): two connections,
    /// one per direction, so that both sides send whenever they like and no
    /// message ever crosses another. Returns once the server has registered
    /// both halves (within [`Timeouts::receive`](crate::Timeouts::receive)).
    /// [`Error::NotDuplex`] when the server answers as a plain one.
    pub fn connect_duplex(&self, addr: impl ToSocketAddrs) -> Result<Duplex, Error> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        Duplex::open(
            || self.connect(&addrs[..]),
            self.runner.settings.conn.timeouts.receive,
        )
    }

    /// Connects, exchanges the greeting, and runs the connection's loop with
    /// a new handler on a thread of its own (with an
    /// [`set_event_handler`](Self::set_event_handler) handler: on the event
    /// threads). Returns the connection's id once greeted; a greeting that
    /// fails is the error, and no hook runs. With an event handler, it is
    /// not for an event hook (the greeting it waits for is driven by an
    /// event thread): there it says `Error::Io` with
    /// `ErrorKind::WouldBlock` at once.
    pub fn connect_to(&mut self, addr: impl ToSocketAddrs) -> Result<ConnId, Error> {
        if let Handlers::Events(factory) = &self.runner.handlers {
            let factory = factory.clone();
            let connected = self.open(addr)?;
            let cfg = Arc::new(self.runner.settings.conn.clone());
            return self.runner.connect_on_events(factory, connected, cfg);
        }
        let conn = self.connect(addr)?;
        let id = conn.id();
        let ctx = self.runner.context();
        if !self.runner.spawn(conn, &ctx) {
            return Err(Error::Panicked(format!(
                "{id}: the handler factory panicked or no thread could start"
            )));
        }
        Ok(id)
    }

    /// Waits up to `timeout` for [`connect_to`](Self::connect_to)
    /// connection `id` to end, and returns how it ended (`None`: still
    /// running, or unknown).
    pub fn join(&mut self, id: ConnId, timeout: Duration) -> Option<Result<(), Error>> {
        self.runner.pool.join(id, timeout)
    }

    /// Runs the client loop until stopped: `pre_loop`; `conn_shutdown` and
    /// `loop_pass` as connections end (and every
    /// [`loop_pass_interval`](Self::set_loop_pass_interval) if one is set);
    /// then the connections are closed like [`close_all`](Self::close_all),
    /// and `post_loop`. Sleeps in between.
    pub fn start(&mut self) {
        self.runner.run();
        // Later connections start afresh.
        self.runner.pool.renew();
    }

    /// Stops every [`connect_to`](Self::connect_to) connection gracefully
    /// (they finish the message in flight; their `post_loop` runs), closing
    /// those still running after the drain timeout.
    pub fn close_all(&mut self) {
        let ctx = self.runner.context();
        self.runner.drain(&ctx);
        // Later connections start afresh.
        self.runner.pool.renew();
    }

    fn open(&self, addr: impl ToSocketAddrs) -> Result<(TcpStream, SocketAddr), Error> {
        let connect = self.runner.settings.conn.timeouts.connect;
        let mut last = None;
        for addr in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, connect) {
                Ok(stream) => return Ok((stream, addr)),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) if e.kind() == io::ErrorKind::TimedOut => Error::Timeout(Deadline::Connect),
            Some(e) => e.into(),
            None => io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to").into(),
        })
    }
}
