//! The one loop of a server or a client ([`Runner::run`]) and its
//! [`Hooks`]: it sleeps until something happens (a listener has
//! connections, a connection ended, a stop, or the `loop_pass` interval if
//! one is set), runs the hooks, and when stopped drains the connections.
//! A server adds listeners (and `conn_init`); a client has none.
//!
//! Also what both own alike: the settings of their connections, the
//! factory of handlers (a panicking factory is caught, for either), the
//! connection threads.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::config::{Config, Settings};
use crate::conn::{Conn, Owner};
use crate::connections::{Connections, Context, Ended, LoopEvent, StopHandle};
use crate::error::Error;
use crate::events::EventHandler;
use crate::handler::{call_hook, panic_message, Handler};
use crate::id::ConnId;
use crate::listen::{accept_some, Accepted, Refusals};
use crate::pool::Pool;

/// When accepting fails for want of file descriptors, try again after this.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The factory of handlers, one per connection.
pub(crate) type Factory = Arc<dyn Fn() -> Box<dyn Handler> + Send + Sync>;

/// The factory of event handlers, one per connection.
pub(crate) type EventFactory = Arc<dyn Fn() -> Box<dyn EventHandler> + Send + Sync>;

/// Who serves the connections: a thread each, or the event threads.
#[derive(Clone)]
pub(crate) enum Handlers {
    Threads(Factory),
    Events(EventFactory),
}

/// The hooks of a server's or client's own loop, mirroring the reference's
/// `TinyProtoServer` and `TinyProtoClient` subclass methods. Every method
/// has a default body; a panicking hook is logged and the loop goes on.
pub trait Hooks: Send + 'static {
    /// Runs once when the loop starts ([`Server::start`](crate::Server::start),
    /// [`Client::start`](crate::Client::start)), before anything else.
    fn pre_loop(&mut self, ctx: &Context) {
        let _ = ctx;
    }

    /// Runs after each pass of the loop: when connections were accepted,
    /// when connections ended, at a stop; and every
    /// [`loop_pass_interval`](crate::Server::set_loop_pass_interval) if one
    /// is set. (The Python package runs it every 30 ms: it polls.)
    fn loop_pass(&mut self, ctx: &Context) {
        let _ = ctx;
    }

    /// Runs once at the end of the loop, after every connection has ended
    /// (or the drain timeout ran out).
    fn post_loop(&mut self, ctx: &Context) {
        let _ = ctx;
    }

    /// Servers only: runs for a new connection (it is registered already)
    /// before its thread starts; the greeting has not been exchanged yet.
    fn conn_init(&mut self, ctx: &Context, id: ConnId, peer: SocketAddr) {
        let _ = (ctx, id, peer);
    }

    /// Runs after a connection's thread ended (its `post_loop` ran), with
    /// the result its handler saw (a client: its
    /// [`connect_to`](crate::Client::connect_to) connections).
    fn conn_shutdown(
        &mut self,
        ctx: &Context,
        id: ConnId,
        peer: SocketAddr,
        result: &Result<(), Error>,
    ) {
        let _ = (ctx, id, peer, result);
    }
}

/// No hooks.
impl Hooks for () {}

/// What a server and a client own alike, and their one loop.
pub(crate) struct Runner {
    pub(crate) settings: Settings,
    pub(crate) handlers: Handlers,
    hooks: Box<dyn Hooks>,
    pub(crate) pool: Pool,
    /// The server's listeners (none for a client).
    pub(crate) listeners: Vec<TcpListener>,
    /// At most this many connections at once (a server's).
    pub(crate) limit: Option<usize>,
}

impl Runner {
    pub(crate) fn new() -> Self {
        Self {
            settings: Settings::default(),
            handlers: Handlers::Threads(Arc::new(|| Box::new(()))),
            hooks: Box::new(()),
            pool: Pool::new(),
            listeners: Vec::new(),
            limit: None,
        }
    }

    pub(crate) fn set_factory(&mut self, factory: Factory) {
        self.handlers = Handlers::Threads(factory);
    }

    pub(crate) fn set_event_factory(&mut self, factory: EventFactory) {
        self.handlers = Handlers::Events(factory);
    }

    pub(crate) fn set_hooks(&mut self, hooks: Box<dyn Hooks>) {
        self.hooks = hooks;
    }

    pub(crate) fn active_connections(&self) -> Connections {
        Connections::new(self.pool.shared.clone())
    }

    pub(crate) fn stop_handle(&self) -> StopHandle {
        self.pool.stop_handle()
    }

    /// What the hooks reach.
    pub(crate) fn context(&self) -> Context {
        Context {
            connections: self.active_connections(),
            stop: self.stop_handle(),
            local_addrs: self
                .listeners
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect(),
        }
    }

    /// A new connection over `stream`, with a fresh id.
    pub(crate) fn new_conn(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        cfg: Arc<Config>,
    ) -> Result<Conn, Error> {
        let owner = Owner {
            connections: self.active_connections(),
            stop: self.stop_handle(),
        };
        Conn::new(self.pool.shared.new_id(), stream, peer, cfg, owner)
    }

    /// Runs `conn`'s loop with a new handler on a thread of its own,
    /// `conn_init` first on a server. False (logged) when the factory
    /// panicked or no thread could start.
    pub(crate) fn spawn(&mut self, conn: Conn, ctx: &Context) -> bool {
        let id = conn.id();
        let peer = conn.peer_addr();
        let Handlers::Threads(factory) = &self.handlers else {
            log::error!(
                "{id}: an event handler runs on the event threads, not a thread of its own"
            );
            return false;
        };
        let handler = match catch_unwind(AssertUnwindSafe(|| factory())) {
            Ok(handler) => handler,
            Err(p) => {
                log::error!("{id}: handler factory panicked: {}", panic_message(&*p));
                return false;
            }
        };
        let server = !self.listeners.is_empty();
        let hooks = &mut self.hooks;
        let queue_len = self.settings.conn.queue_len;
        // Registered before conn_init, so the hook sees it.
        let spawned = self.pool.spawn(conn, handler, queue_len, |id| {
            if server {
                call_hook("conn_init", || hooks.conn_init(ctx, id, peer));
            }
        });
        if let Err(e) = spawned {
            log::error!("{id}: cannot start its thread: {e}");
            return false;
        }
        true
    }

    /// The loop: `pre_loop`; accepts on the listeners and `conn_shutdown`
    /// and `loop_pass` as things happen, sleeping in between; once stopped,
    /// the drain and `post_loop`.
    pub(crate) fn run(&mut self) {
        let ctx = self.context();
        let stop = self.stop_handle();
        let cfg = Arc::new(self.settings.conn.clone());
        let interval = cfg.loop_pass_interval;
        let refusals = Refusals::new(&cfg);
        call_hook("pre_loop", || self.hooks.pre_loop(&ctx));
        // Connections that came before the loop are waiting: accept them now.
        let mut acceptable: Vec<usize> = (0..self.listeners.len()).collect();
        let mut retry_accept = None;
        while !stop.is_stopped() {
            for index in std::mem::take(&mut acceptable) {
                match self.accept(index, &cfg, &ctx, &refusals) {
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
                    LoopEvent::Ended(ended) => self.ended(&ctx, ended),
                    LoopEvent::Stop => {} // woken to see the stop
                }
                next = self.pool.next_event(Some(Instant::now()));
            }
            if retry_accept.is_some_and(|at| Instant::now() >= at) {
                retry_accept = None;
                acceptable.extend(0..self.listeners.len());
            }
            call_hook("loop_pass", || self.hooks.loop_pass(&ctx));
        }
        log::info!("stopping: {} connection(s) to drain", self.pool.active());
        self.listeners.clear();
        self.drain(&ctx);
        call_hook("post_loop", || self.hooks.post_loop(&ctx));
    }

    /// Accepts what waits on listener `index`: each connection runs, or is
    /// refused at the connection limit.
    fn accept(
        &mut self,
        index: usize,
        cfg: &Arc<Config>,
        ctx: &Context,
        refusals: &Refusals,
    ) -> Accepted {
        let Some(listener) = self.listeners.get(index) else {
            return Accepted::All;
        };
        let mut accepted = Vec::new();
        let result = accept_some(listener, |stream, peer| accepted.push((stream, peer)));
        for (stream, peer) in accepted {
            if self.limit.is_some_and(|l| self.pool.active() >= l) {
                log::warn!("refusing {peer}: at the connection limit");
                refusals.refuse(stream);
                continue;
            }
            if let Handlers::Events(factory) = &self.handlers {
                self.serve_on_events(factory.clone(), (stream, peer), cfg, ctx);
                continue;
            }
            match self.new_conn(stream, peer, cfg.clone()) {
                Ok(conn) => {
                    log::debug!("{}: accepted {peer}", conn.id());
                    self.spawn(conn, ctx);
                }
                Err(e) => log::error!("{peer}: not served: {e}"),
            }
        }
        result
    }

    /// Serves an accepted connection on the event threads with a new
    /// handler, `conn_init` first.
    fn serve_on_events(
        &mut self,
        factory: EventFactory,
        (stream, peer): (TcpStream, SocketAddr),
        cfg: &Arc<Config>,
        ctx: &Context,
    ) {
        let handler = match catch_unwind(AssertUnwindSafe(|| factory())) {
            Ok(handler) => handler,
            Err(p) => {
                log::error!("{peer}: handler factory panicked: {}", panic_message(&*p));
                return;
            }
        };
        let owner = Owner {
            connections: self.active_connections(),
            stop: self.stop_handle(),
        };
        let hooks = &mut self.hooks;
        let served =
            self.pool
                .serve_on_events((stream, peer), cfg.clone(), owner, handler, None, |id| {
                    log::debug!("{id}: accepted {peer}");
                    call_hook("conn_init", || hooks.conn_init(ctx, id, peer));
                });
        if let Err(e) = served {
            log::error!("{peer}: not served: {e}");
        }
    }

    /// A client's connection over `stream` on the event threads with a new
    /// handler: returns once its greeting is done (its id), or failed (the
    /// error; no hook runs then, as for a connection that never started).
    pub(crate) fn connect_on_events(
        &mut self,
        factory: EventFactory,
        connected: (TcpStream, SocketAddr),
        cfg: Arc<Config>,
    ) -> Result<ConnId, Error> {
        if crate::events::on_event_thread() {
            // Its greeting would wait for this very thread.
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "connect_to waits for the greeting: call it from a thread of your own, not from an event hook",
            )));
        }
        let handler = catch_unwind(AssertUnwindSafe(|| factory()))
            .map_err(|p| Error::Panicked(format!("handler factory: {}", panic_message(&*p))))?;
        let owner = Owner {
            connections: self.active_connections(),
            stop: self.stop_handle(),
        };
        let (told, greeted) = mpsc::channel();
        let id = self
            .pool
            .serve_on_events(connected, cfg, owner, handler, Some(told), |_| {})?;
        // The connection always answers: greeted, failed, or its greeting
        // deadline ran out (or its thread dropped it, closing the channel).
        match greeted.recv() {
            Ok(Ok(())) => Ok(id),
            Ok(Err(e)) => {
                self.pool.abandon(id);
                Err(e)
            }
            Err(mpsc::RecvError) => {
                self.pool.abandon(id);
                Err(Error::Io(std::io::Error::other("the event thread stopped")))
            }
        }
    }

    fn ended(&mut self, ctx: &Context, Ended { id, peer, result }: Ended) {
        call_hook("conn_shutdown", || {
            self.hooks.conn_shutdown(ctx, id, peer, &result)
        });
    }

    /// Stops every connection gracefully (they finish the message in
    /// flight; their `post_loop` runs), closing those still running after
    /// the drain timeout; `conn_shutdown` sees each end.
    pub(crate) fn drain(&mut self, ctx: &Context) {
        let hooks = &mut self.hooks;
        self.pool.drain(
            self.settings.drain_timeout,
            &mut |Ended { id, peer, result }| {
                call_hook("conn_shutdown", || {
                    hooks.conn_shutdown(ctx, id, peer, &result)
                })
            },
        );
    }
}
