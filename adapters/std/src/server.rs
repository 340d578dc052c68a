//! The threaded [`Server`]: listeners, one thread per connection, server
//! hooks, connection limit, graceful stop.
//!
//! The server's loop sleeps until something happens: a listener has
//! connections (the reactor says so), a connection ended, a stop, or the
//! `loop_pass` interval if one is set. Accepting is immediate.

use std::io::{self, Read as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use embedded_io_adapters::std::FromStd;

use crate::config::{settings_methods, Settings};
use crate::conn::{Conn, Owner};
use crate::connections::{Connections, Context, Ended, LoopEvent, StopHandle};
use crate::error::Error;
use crate::handler::{call_hook, panic_message, Handler};
use crate::id::ConnId;
use crate::pool::{Factory, Pool};

/// At most this many refused connections linger at once, waiting for the
/// peer to read the 0xFE before the close; more are closed at once.
const MAX_LINGERING_REFUSALS: usize = 32;

/// How long a refused connection lingers for the peer to read 0xFE.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// At most this many accepts per listener before the loop looks at its
/// other events (the rest follow at once).
const ACCEPT_BATCH: usize = 256;

/// When accepting fails for want of file descriptors, try again after this.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The hooks of a server's own loop, mirroring the reference's
/// `TinyProtoServer` subclass methods. Every method has a default body;
/// a panicking hook is logged and the server goes on.
pub trait ServerHooks: Send + 'static {
    /// Runs once in [`Server::start`], before the first accept.
    fn pre_loop(&mut self, server: &Context) {
        let _ = server;
    }

    /// Runs after each pass of the server's loop: when connections were
    /// accepted, when connections ended, at a stop; and every
    /// [`loop_pass_interval`](Server::set_loop_pass_interval) if one is set.
    /// (The Python package runs it every 30 ms: it polls.)
    fn loop_pass(&mut self, server: &Context) {
        let _ = server;
    }

    /// Runs once at the end of [`Server::start`], after every connection
    /// has ended (or the drain timeout ran out).
    fn post_loop(&mut self, server: &Context) {
        let _ = server;
    }

    /// Runs for a new connection (it is registered already) before its
    /// thread starts; the greeting has not been exchanged yet.
    fn conn_init(&mut self, server: &Context, id: ConnId, peer: SocketAddr) {
        let _ = (server, id, peer);
    }

    /// Runs after a connection's thread ended (its `post_loop` ran), with
    /// the result its handler saw.
    fn conn_shutdown(
        &mut self,
        server: &Context,
        id: ConnId,
        peer: SocketAddr,
        result: &Result<(), Error>,
    ) {
        let _ = (server, id, peer, result);
    }
}

/// No server hooks.
impl ServerHooks for () {}

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
    listeners: Vec<TcpListener>,
    settings: Settings,
    factory: Factory,
    hooks: Box<dyn ServerHooks>,
    limit: Option<usize>,
    pool: Pool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners)
            .field("cfg", &self.settings.conn)
            .field("limit", &self.limit)
            .field("drain_timeout", &self.settings.drain_timeout)
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
            listeners: Vec::new(),
            settings: Settings::default(),
            factory: Arc::new(|| Box::new(())),
            hooks: Box::new(()),
            limit: None,
            pool: Pool::new(),
        }
    }

    /// Listens on `addr` (IPv4 or IPv6; port 0 picks a free port) and
    /// returns the address actually bound. May be called several times.
    pub fn add_addr(&mut self, addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        log::info!("listening on {local}");
        self.listeners.push(listener);
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
        self.settings.conn.duplex = duplex;
    }

    /// The addresses listened on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Sets the factory that makes one handler per connection.
    pub fn set_conn_handler<H, F>(&mut self, factory: F)
    where
        H: Handler,
        F: Fn() -> H + Send + Sync + 'static,
    {
        self.factory = Arc::new(move || Box::new(factory()));
    }

    /// Sets the server's own hooks.
    pub fn set_hooks(&mut self, hooks: impl ServerHooks) {
        self.hooks = Box::new(hooks);
    }

    /// At most `limit` connections at once (`None`: no limit). A connection
    /// past it is answered the single byte 0xFE and closed.
    pub fn set_connection_limit(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    settings_methods!();

    /// The registry of active connections.
    pub fn active_connections(&self) -> Connections {
        Connections::new(self.pool.shared.clone())
    }

    /// A handle that stops [`start`](Self::start) from another thread (or
    /// from a hook). Stopping before `start` makes it return at once.
    pub fn stop_handle(&self) -> StopHandle {
        self.pool.stop_handle()
    }

    /// Runs the server until stopped: accepts connections, runs one thread
    /// per connection, then stops gracefully (no new accepts; connections
    /// finish the message in flight and end, their `post_loop` and
    /// `conn_shutdown` run; after the drain timeout the rest are closed).
    ///
    /// Fails at once if no address was added.
    pub fn start(&mut self) -> io::Result<()> {
        if self.listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no address to listen on (call add_addr)",
            ));
        }
        raise_open_file_limit();
        for (index, listener) in self.listeners.iter().enumerate() {
            listener.set_nonblocking(true)?;
            self.pool.reactor()?.add_listener(index, listener)?;
        }
        let cfg = Arc::new(self.settings.conn.clone());
        let stop = self.stop_handle();
        let ctx = Context {
            connections: self.active_connections(),
            stop: stop.clone(),
            local_addrs: self.local_addrs(),
        };
        let owner = Owner {
            connections: self.active_connections(),
            stop: stop.clone(),
        };
        let lingering = Arc::new(AtomicUsize::new(0));
        let interval = cfg.loop_pass_interval;
        let hooks = &mut self.hooks;
        call_hook("pre_loop", || hooks.pre_loop(&ctx));
        // Connections that came before `start` are waiting: accept them now.
        let mut acceptable: Vec<usize> = (0..self.listeners.len()).collect();
        let mut retry_accept = None;
        // Also set by a stop from inside (the reactor failing).
        let mut stopping = false;
        while !stop.is_stopped() && !stopping {
            for index in acceptable.drain(..) {
                let Some(listener) = self.listeners.get(index) else {
                    continue;
                };
                match accept_some(listener, |stream, peer| {
                    if self.limit.is_some_and(|l| self.pool.active() >= l) {
                        log::warn!("refusing {peer}: at the connection limit");
                        refuse(stream, &lingering);
                        return;
                    }
                    let id = self.pool.shared.new_id();
                    let conn = Conn::new(id, stream, peer, cfg.clone(), owner.clone());
                    log::debug!("{id}: accepted {peer}");
                    let factory = &self.factory;
                    let handler = match catch_unwind(AssertUnwindSafe(|| factory())) {
                        Ok(handler) => handler,
                        Err(p) => {
                            log::error!("handler factory panicked: {}", panic_message(&*p));
                            return;
                        }
                    };
                    // Registered before conn_init, so the hook sees it.
                    if let Err(e) = self.pool.spawn(conn, handler, cfg.queue_len, |id| {
                        call_hook("conn_init", || hooks.conn_init(&ctx, id, peer))
                    }) {
                        log::error!("{id}: cannot start its thread: {e}");
                    }
                }) {
                    Accepted::All => {}
                    // More are waiting: come back to them after the other events.
                    Accepted::Some => retry_accept = Some(Instant::now()),
                    // Out of file descriptors and the like: the one timer.
                    Accepted::Failed => retry_accept = Some(Instant::now() + ACCEPT_RETRY),
                }
            }
            let until = match (retry_accept, interval.map(|i| Instant::now() + i)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Everything that is there now, or the first thing to come.
            let mut next = self.pool.next_event(until);
            while let Some(event) = next {
                match event {
                    LoopEvent::Acceptable(index) => acceptable.push(index),
                    LoopEvent::Ended(Ended { id, peer, result }) => {
                        call_hook("conn_shutdown", || {
                            hooks.conn_shutdown(&ctx, id, peer, &result)
                        })
                    }
                    LoopEvent::Stop => stopping = true,
                }
                next = self.pool.next_event(Some(Instant::now()));
            }
            if retry_accept.is_some_and(|at| Instant::now() >= at) {
                retry_accept = None;
                acceptable.extend(0..self.listeners.len());
            }
            call_hook("loop_pass", || hooks.loop_pass(&ctx));
        }
        log::info!("stopping: {} connection(s) to drain", self.pool.active());
        self.listeners.clear();
        self.pool.drain(
            self.settings.drain_timeout,
            &mut |Ended { id, peer, result }| {
                call_hook("conn_shutdown", || {
                    hooks.conn_shutdown(&ctx, id, peer, &result)
                })
            },
        );
        call_hook("post_loop", || hooks.post_loop(&ctx));
        Ok(())
    }
}

/// How a round of accepting went.
enum Accepted {
    /// Until `WouldBlock`: nothing waits any more.
    All,
    /// A batch, with more waiting.
    Some,
    /// An error (out of file descriptors and the like).
    Failed,
}

/// Accepts up to a batch of connections from a non-blocking listener.
fn accept_some(listener: &TcpListener, mut take: impl FnMut(TcpStream, SocketAddr)) -> Accepted {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, peer)) => take(stream, peer),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::All,
            // One connection's trouble (aborted before it was accepted): the
            // rest of the backlog is still there.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                continue
            }
            Err(e) => {
                log::warn!("accept failed: {e}");
                return Accepted::Failed;
            }
        }
    }
    Accepted::Some
}

/// Raises the open-file soft limit to the hard limit: each connection holds
/// one file descriptor.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => log::debug!("open-file limit: {limit}"),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// Answers a connection past the limit with the single byte 0xFE and
/// closes it, letting it linger briefly so the peer can read the byte
/// before the close (a close with the peer's greeting unread would reset
/// the connection and could destroy the 0xFE in flight).
fn refuse(mut stream: TcpStream, lingering: &Arc<AtomicUsize>) {
    let sent = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(1))))
        .and_then(|()| {
            tinyproto::blocking::refuse_connection_limit(&mut FromStd::new(&mut stream))
        });
    if let Err(e) = sent {
        log::debug!("refusal not sent: {e}");
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    if lingering.fetch_add(1, Ordering::SeqCst) >= MAX_LINGERING_REFUSALS {
        lingering.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let lingering2 = lingering.clone();
    let spawned = thread::Builder::new()
        .name("tinyproto-refuse".into())
        .spawn(move || {
            let deadline = Instant::now() + REFUSAL_LINGER;
            let mut buf = [0u8; 64];
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                    break;
                }
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            lingering2.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        lingering.fetch_sub(1, Ordering::SeqCst);
    }
}
