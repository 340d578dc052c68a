//! Settings shared by the server and the client: time limits, message size
//! limit, `TCP_NODELAY`, plugins.

use std::sync::Arc;
use std::time::Duration;

use crate::budget::{Budget, DEFAULT_MEMORY_BUDGET};
use crate::plugin::Plugins;

/// The time limits of a connection. Every one is enforced with socket
/// timeouts, so no thread waits on a peer longer than these say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Client only: establishing the TCP connection. Default 5 s (the
    /// reference client's socket timeout).
    pub connect: Duration,
    /// Both greeting bytes must have crossed within this much of the
    /// connection's start. Default 10 s.
    pub greeting: Duration,
    /// A whole message, from its first byte to its last, in either direction
    /// (a peer that drips one byte at a time cannot hold a thread longer).
    /// Default 60 s.
    pub message: Duration,
    /// A single write that makes no progress (the peer stopped reading).
    /// Default 10 s.
    pub write: Duration,
    /// How long [`Conn::receive`](crate::Conn::receive) waits for a message
    /// to begin. Default 30 s.
    pub receive: Duration,
    /// Close a connection on which no message moved either way for this
    /// long. Default `None` (never).
    pub idle: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            greeting: Duration::from_secs(10),
            message: Duration::from_secs(60),
            write: Duration::from_secs(10),
            receive: Duration::from_secs(30),
            idle: None,
        }
    }
}

impl Timeouts {
    /// Sets [`connect`](Self::connect).
    pub fn with_connect(mut self, d: Duration) -> Self {
        self.connect = d;
        self
    }
    /// Sets [`greeting`](Self::greeting).
    pub fn with_greeting(mut self, d: Duration) -> Self {
        self.greeting = d;
        self
    }
    /// Sets [`message`](Self::message).
    pub fn with_message(mut self, d: Duration) -> Self {
        self.message = d;
        self
    }
    /// Sets [`write`](Self::write).
    pub fn with_write(mut self, d: Duration) -> Self {
        self.write = d;
        self
    }
    /// Sets [`receive`](Self::receive).
    pub fn with_receive(mut self, d: Duration) -> Self {
        self.receive = d;
        self
    }
    /// Sets [`idle`](Self::idle).
    pub fn with_idle(mut self, d: Option<Duration>) -> Self {
        self.idle = d;
        self
    }
}

/// Default cap on the length of an accepted message: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 16 * 1024 * 1024;

/// Default number of messages other connections may queue for one connection.
pub const DEFAULT_QUEUE_LEN: usize = 1024;

/// Default time a graceful stop waits for connections to end: 5 s.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-connection settings, shared by all connections of a server or client.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub timeouts: Timeouts,
    pub max_message_len: u32,
    pub nodelay: bool,
    pub queue_len: usize,
    pub plugins: Plugins,
    /// `loop_pass` also runs this long after the last one when nothing else
    /// woke the loop (`None`: never on a timer).
    pub loop_pass_interval: Option<Duration>,
    /// Server only: every connection is half of a duplex link.
    pub duplex: bool,
    /// Incoming messages held at once, shared by every connection.
    pub budget: Arc<Budget>,
    /// TLS under the protocol, if set.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsSide>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            timeouts: Timeouts::default(),
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            nodelay: true,
            queue_len: DEFAULT_QUEUE_LEN,
            plugins: Plugins::default(),
            loop_pass_interval: None,
            duplex: false,
            budget: Budget::new(DEFAULT_MEMORY_BUDGET),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

pub(crate) type SharedConfig = Arc<Config>;

/// The settings a [`Server`](crate::Server) and a [`Client`](crate::Client)
/// share: those of their connections, and how long a stop waits for them.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Copied into every new connection.
    pub conn: Config,
    /// How long a graceful stop waits for connections to end.
    pub drain_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            conn: Config::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// The public methods a server and a client share, written once: invoked
/// inside `impl Server` and `impl Client`, whose `runner` they reach.
macro_rules! shared_methods {
    () => {
        /// Sets the factory that makes one handler per connection (a
        /// client's: per [`connect_to`](crate::Client::connect_to)
        /// connection). A panicking factory is logged and its connection
        /// closed.
        pub fn set_conn_handler<H, F>(&mut self, factory: F)
        where
            H: $crate::Handler,
            F: Fn() -> H + Send + Sync + 'static,
        {
            self.runner
                .set_factory(::std::sync::Arc::new(move || Box::new(factory())));
        }

        /// Serves every connection (a client's: every
        /// [`connect_to`](crate::Client::connect_to) connection) on a few
        /// event threads (one per core) with a handler from `factory`,
        /// instead of a thread per connection: for many busy connections, at
        /// a fraction of the CPU (see the [`events`](crate::events) module).
        /// Its hooks must not wait: replies are queued with
        /// [`EventConn::send`](crate::EventConn::send). Replaces
        /// [`set_conn_handler`](Self::set_conn_handler)'s factory (and the
        /// other way round).
        pub fn set_event_handler<H, F>(&mut self, factory: F)
        where
            H: $crate::EventHandler,
            F: Fn() -> H + Send + Sync + 'static,
        {
            self.runner
                .set_event_factory(::std::sync::Arc::new(move || Box::new(factory())));
        }

        /// Sets the hooks of the loop ([`start`](Self::start)).
        pub fn set_hooks(&mut self, hooks: impl $crate::Hooks) {
            self.runner.set_hooks(Box::new(hooks));
        }

        /// The registry of active connections.
        pub fn active_connections(&self) -> $crate::Connections {
            self.runner.active_connections()
        }

        /// A handle that stops [`start`](Self::start) from another thread
        /// (or from a hook). Stopping before `start` makes it return at once.
        pub fn stop_handle(&self) -> $crate::StopHandle {
            self.runner.stop_handle()
        }

        /// Sets every time limit of new connections.
        pub fn set_timeouts(&mut self, timeouts: $crate::Timeouts) {
            self.runner.settings.conn.timeouts = timeouts;
        }

        /// The time limits of new connections.
        pub fn timeouts(&self) -> $crate::Timeouts {
            self.runner.settings.conn.timeouts
        }

        /// Caps the length of accepted messages (default
        /// [`DEFAULT_MAX_MESSAGE_LEN`](crate::DEFAULT_MAX_MESSAGE_LEN)); longer
        /// ones are answered 0x00 and the connection goes on.
        pub fn set_max_message_len(&mut self, len: u32) {
            self.runner.settings.conn.max_message_len = len;
        }

        /// Bounds the bytes of incoming messages held at once by all the
        /// connections together (default
        /// [`DEFAULT_MEMORY_BUDGET`](crate::DEFAULT_MEMORY_BUDGET)). A whole
        /// message takes its length from the budget before its length is
        /// answered, and gives it back once its handler returned (or
        /// [`Conn::receive`](crate::Conn::receive) returned it); a chunked
        /// one takes its chunk buffer. A message that does not fit yet waits
        /// for room before its status byte goes out (the sender waits for
        /// the 0xFF), until the message deadline; one larger than the whole
        /// budget, or still without room then, is answered 0x00 with
        /// [`Error::MemoryBudget`](crate::Error::MemoryBudget).
        pub fn set_memory_budget(&mut self, bytes: u64) {
            self.runner.settings.conn.budget = $crate::budget::Budget::new(bytes);
        }

        /// `TCP_NODELAY` on new sockets (default `true`).
        pub fn set_nodelay(&mut self, nodelay: bool) {
            self.runner.settings.conn.nodelay = nodelay;
        }

        /// How many messages [`Connections`](crate::Connections) may queue
        /// for one connection (default
        /// [`DEFAULT_QUEUE_LEN`](crate::DEFAULT_QUEUE_LEN)).
        pub fn set_queue_len(&mut self, len: usize) {
            self.runner.settings.conn.queue_len = len;
        }

        /// How long a graceful stop waits for connections to end before
        /// closing them (default
        /// [`DEFAULT_DRAIN_TIMEOUT`](crate::DEFAULT_DRAIN_TIMEOUT)).
        pub fn set_drain_timeout(&mut self, timeout: ::std::time::Duration) {
            self.runner.settings.drain_timeout = timeout;
        }

        /// Runs the `loop_pass` hooks (the connections' and the loop's own)
        /// also every `interval` when nothing else happened (default `None`:
        /// they run after each message and event only, and idle connections
        /// sleep). The Python package polls every 30 ms instead.
        pub fn set_loop_pass_interval(&mut self, interval: Option<::std::time::Duration>) {
            self.runner.settings.conn.loop_pass_interval = interval;
        }

        /// Adds a plugin at the end of the chain of new connections.
        pub fn register_plugin(&mut self, plugin: impl $crate::Plugin) {
            self.runner
                .settings
                .conn
                .plugins
                .push(::std::sync::Arc::new(plugin));
        }
    };
}
pub(crate) use shared_methods;
