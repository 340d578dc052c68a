//! The [`Client`]: plain synchronous connections, or connections run by a
//! handler on threads of their own, with an optional client loop.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{settings_methods, Settings};
use crate::conn::{Conn, Owner};
use crate::connections::{Connections, Context, Ended, LoopEvent, StopHandle};
use crate::duplex::Duplex;
use crate::error::{Deadline, Error};
use crate::handler::{call_hook, Handler};
use crate::id::ConnId;
use crate::pool::{Factory, Pool};

/// The hooks of a client's own loop ([`Client::start`]), mirroring the
/// reference's `TinyProtoClient`. Every method has a default body.
pub trait ClientHooks: Send + 'static {
    /// Runs once at the start of [`Client::start`].
    fn pre_loop(&mut self, client: &Context) {
        let _ = client;
    }

    /// Runs after each pass of the client loop (a connection ended, a
    /// stop), and every [`loop_pass_interval`](Client::set_loop_pass_interval)
    /// if one is set.
    fn loop_pass(&mut self, client: &Context) {
        let _ = client;
    }

    /// Runs once when the loop stopped, before the connections are closed.
    fn post_loop(&mut self, client: &Context) {
        let _ = client;
    }

    /// Runs after a [`Client::connect_to`] connection ended, with its result.
    fn conn_shutdown(
        &mut self,
        client: &Context,
        id: ConnId,
        peer: SocketAddr,
        result: &Result<(), Error>,
    ) {
        let _ = (client, id, peer, result);
    }
}

/// No client hooks.
impl ClientHooks for () {}

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
/// optional client loop with [`ClientHooks`].
pub struct Client {
    settings: Settings,
    factory: Factory,
    hooks: Box<dyn ClientHooks>,
    pool: Pool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cfg", &self.settings.conn)
            .field("drain_timeout", &self.settings.drain_timeout)
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
            settings: Settings::default(),
            factory: Arc::new(|| Box::new(())),
            hooks: Box::new(()),
            pool: Pool::new(),
        }
    }

    /// Sets the factory that makes one handler per
    /// [`connect_to`](Self::connect_to) connection.
    pub fn set_conn_handler<H, F>(&mut self, factory: F)
    where
        H: Handler,
        F: Fn() -> H + Send + Sync + 'static,
    {
        self.factory = Arc::new(move || Box::new(factory()));
    }

    /// Sets the client loop's hooks.
    pub fn set_hooks(&mut self, hooks: impl ClientHooks) {
        self.hooks = Box::new(hooks);
    }

    /// Like the reference's `timeout`: sets the connect, greeting and
    /// receive time limits to `timeout` (see [`Timeouts`](crate::Timeouts)).
    pub fn set_timeout(&mut self, timeout: Duration) {
        let t = &mut self.settings.conn.timeouts;
        t.connect = timeout;
        t.greeting = timeout;
        t.receive = timeout;
    }

    settings_methods!();

    /// The registry of active [`connect_to`](Self::connect_to) connections.
    pub fn active_connections(&self) -> Connections {
        Connections::new(self.pool.shared.clone())
    }

    /// A handle that stops [`start`](Self::start).
    pub fn stop_handle(&self) -> StopHandle {
        self.pool.stop_handle()
    }

    /// Connects and exchanges the greeting, for plain synchronous use: the
    /// returned connection runs no loop and no handler.
    /// `Error::Protocol(tinyproto::Error::ConnectionLimit)` when the server
    /// is full.
    pub fn connect(&self, addr: impl ToSocketAddrs) -> Result<Conn, Error> {
        let (stream, peer) = self.open(addr)?;
        let id = self.pool.shared.new_id();
        let owner = Owner {
            connections: self.active_connections(),
            stop: self.stop_handle(),
        };
        let cfg = Arc::new(self.settings.conn.clone());
        let mut conn = Conn::new(id, stream, peer, cfg, owner);
        conn.greet()?;
        log::debug!("{id}: connected to {}", conn.peer_addr());
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
            self.settings.conn.timeouts.receive,
        )
    }

    /// Connects, exchanges the greeting, and runs the connection's loop with
    /// a new handler on a thread of its own. Returns the connection's id.
    pub fn connect_to(&mut self, addr: impl ToSocketAddrs) -> Result<ConnId, Error> {
        let conn = self.connect(addr)?;
        let id = conn.id();
        let handler = (self.factory)();
        self.pool
            .spawn(conn, handler, self.settings.conn.queue_len, |_| {})?;
        Ok(id)
    }

    /// Waits up to `timeout` for [`connect_to`](Self::connect_to)
    /// connection `id` to end, and returns how it ended (`None`: still
    /// running, or unknown).
    pub fn join(&mut self, id: ConnId, timeout: Duration) -> Option<Result<(), Error>> {
        self.pool.join(id, timeout)
    }

    /// Runs the client loop until stopped: `pre_loop`; `conn_shutdown` and
    /// `loop_pass` as connections end (and every
    /// [`loop_pass_interval`](Self::set_loop_pass_interval) if one is set);
    /// `post_loop`; then closes the connections like
    /// [`close_all`](Self::close_all). Sleeps in between.
    pub fn start(&mut self) {
        let ctx = self.context();
        let stop = self.stop_handle();
        let interval = self.settings.conn.loop_pass_interval;
        let hooks = &mut self.hooks;
        call_hook("pre_loop", || hooks.pre_loop(&ctx));
        let mut stopping = false;
        while !stop.is_stopped() && !stopping {
            let until = interval.map(|i| Instant::now() + i);
            let mut next = self.pool.next_event(until);
            while let Some(event) = next {
                match event {
                    LoopEvent::Ended(Ended { id, peer, result }) => {
                        call_hook("conn_shutdown", || {
                            hooks.conn_shutdown(&ctx, id, peer, &result)
                        })
                    }
                    LoopEvent::Stop => stopping = true,
                    LoopEvent::Acceptable(_) => {}
                }
                next = self.pool.next_event(Some(Instant::now()));
            }
            call_hook("loop_pass", || hooks.loop_pass(&ctx));
        }
        call_hook("post_loop", || hooks.post_loop(&ctx));
        self.close_all();
    }

    /// Stops every [`connect_to`](Self::connect_to) connection gracefully
    /// (they finish the message in flight; their `post_loop` runs), closing
    /// those still running after the drain timeout.
    pub fn close_all(&mut self) {
        let ctx = self.context();
        let hooks = &mut self.hooks;
        self.pool.drain(
            self.settings.drain_timeout,
            &mut |Ended { id, peer, result }| {
                call_hook("conn_shutdown", || {
                    hooks.conn_shutdown(&ctx, id, peer, &result)
                })
            },
        );
        // Later connections start afresh.
        self.pool.renew();
    }

    fn context(&self) -> Context {
        Context {
            connections: self.active_connections(),
            stop: self.stop_handle(),
            local_addrs: Vec::new(),
        }
    }

    fn open(&self, addr: impl ToSocketAddrs) -> Result<(TcpStream, SocketAddr), Error> {
        let mut last = None;
        for addr in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.settings.conn.timeouts.connect) {
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
