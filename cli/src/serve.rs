//! `tinyproto serve`: a [`tinyproto_std::Server`] with an echo, sink or print
//! handler, stopped gracefully on SIGINT/SIGTERM.
//!
//! Listening, the connection limit (0xFE), the message limit (0x00),
//! deadlines and the graceful stop are the std adapter's; this module only
//! maps the command line onto it. `--echo` and `--sink`, whose handlers never
//! wait, run on the adapter's event threads (`Server::set_event_handler`);
//! `--print`, which writes to stdout, runs a thread per connection.
//! `--sink` and
//! `--print` take each message in chunks ([`Take::Chunks`]), so memory stays
//! bounded whatever the size (`--print` holds a message in a [`Spool`] until
//! it is whole, then writes it: a message that breaks off prints nothing);
//! `--echo` holds whole messages, up to `--max-message` (16 MiB unless
//! given). A recoverable error (the peer rejecting an echo) is logged and the
//! connection goes on.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use signal_hook::iterator::Signals;

use tinyproto_std::{
    events, Conn, Error, EventConn, EventHandler, Handler, Server, Take, Timeouts,
};

use crate::exit::{self, Failure};
use crate::spool::Spool;
use crate::tls::{self, TlsFiles};
use tinyproto::MAX_MESSAGE_LEN;

/// What the server does with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Send it back.
    Echo,
    /// Count and discard it.
    Sink,
    /// Write it, raw, to stdout.
    Print,
}

/// What `serve` was asked to do.
#[derive(Debug)]
pub struct ServeArgs {
    /// Addresses to listen on.
    pub listen: Vec<String>,
    /// What to do with each message.
    pub mode: Mode,
    /// Connection limit.
    pub max_connections: Option<usize>,
    /// Message length limit; the std adapter's default when `None`.
    pub max_message: Option<u32>,
    /// Bytes of incoming messages held at once; the std adapter's default
    /// when `None`.
    pub memory_budget: Option<u64>,
    /// Greeting, write and idle deadline.
    pub timeout: Option<Duration>,
    /// `--tls-*`: serve over TLS (and require client certificates).
    pub tls: TlsFiles,
}

/// Default `--max-message` of `--echo`, which holds whole messages.
const ECHO_MAX_MESSAGE: u32 = tinyproto_std::DEFAULT_MAX_MESSAGE_LEN;

/// Totals of `--sink`, reported on stop.
#[derive(Debug, Default)]
pub struct Totals {
    /// Whole messages received.
    pub messages: AtomicU64,
    /// Their payload bytes.
    pub bytes: AtomicU64,
}

/// Counts and discards, taking messages in chunks.
struct Sink {
    totals: Arc<Totals>,
    limit: u32,
}

impl EventHandler for Sink {
    fn message_announced(&mut self, _conn: &EventConn, len: u32) -> Take {
        if len <= self.limit {
            Take::Chunks
        } else {
            Take::Reject
        }
    }

    fn transmission_complete(&mut self, _conn: &mut EventConn, len: u32) -> Result<(), Error> {
        self.totals.messages.fetch_add(1, Ordering::Relaxed);
        self.totals
            .bytes
            .fetch_add(u64::from(len), Ordering::Relaxed);
        Ok(())
    }
}

/// Writes each message, raw, to stdout once all of it has arrived: held in
/// a spool meanwhile, so that a message that breaks off prints nothing and
/// messages of several connections never interleave (stdout's lock is held
/// only while a whole message is written).
struct Print {
    spool: Spool,
    limit: u32,
}

impl Handler for Print {
    fn message_announced(&mut self, _conn: &Conn, len: u32) -> Take {
        if len <= self.limit {
            Take::Chunks
        } else {
            Take::Reject
        }
    }

    fn transmission_chunk(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.spool.write(chunk).map_err(Error::handler)
    }

    fn transmission_complete(&mut self, _conn: &mut Conn, _len: u32) -> Result<(), Error> {
        let mut out = io::stdout().lock();
        self.spool
            .copy_to(&mut out)
            .and_then(|()| out.flush())
            .map_err(Error::handler)
    }

    fn post_loop(&mut self, _conn: &mut Conn, _result: &Result<(), Error>) {
        // A message that broke off: its bytes are dropped, never printed.
        self.spool.clear();
    }
}

/// Runs `serve` until SIGINT or SIGTERM.
pub fn run(args: &ServeArgs) -> Result<(), Failure> {
    let mut server = Server::new();
    if let Some(config) = tls::server_config(&args.tls)? {
        server.set_tls(config);
    }
    {
        let mut out = io::stdout().lock();
        for addr in &args.listen {
            let local = server.add_addr(addr.as_str()).map_err(|e| {
                Failure::new(exit::CONNECT, format!("cannot listen on {addr}: {e}"))
            })?;
            writeln!(out, "listening on {local}").map_err(|e| Failure::io("stdout", e))?;
        }
        out.flush().map_err(|e| Failure::io("stdout", e))?;
    }
    let totals = Arc::new(Totals::default());
    // Sink and print stream, and take up to the protocol's largest message.
    let limit = args.max_message.unwrap_or(match args.mode {
        Mode::Echo => ECHO_MAX_MESSAGE,
        Mode::Sink | Mode::Print => MAX_MESSAGE_LEN,
    });
    server.set_max_message_len(limit);
    if let Some(budget) = args.memory_budget {
        server.set_memory_budget(budget);
    }
    match args.mode {
        Mode::Echo => server.set_event_handler(|| events::on_message(|conn, msg| conn.send(msg))),
        Mode::Sink => {
            let totals = Arc::clone(&totals);
            server.set_event_handler(move || Sink {
                totals: Arc::clone(&totals),
                limit,
            });
        }
        Mode::Print => server.set_conn_handler(move || Print {
            spool: Spool::new(),
            limit,
        }),
    }
    server.set_connection_limit(args.max_connections);
    if let Some(t) = args.timeout {
        server.set_timeouts(
            Timeouts::default()
                .with_greeting(t)
                .with_write(t)
                .with_idle(Some(t))
                .with_message(t),
        );
    }

    let stop = server.stop_handle();
    let signalled = Arc::new(AtomicBool::new(false));
    let signals = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
    for signal in signals {
        // A second signal while stopping ends the process at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&signalled))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&signalled)))
            .map_err(|e| Failure::io("installing the signal handler", e))?;
    }
    // The watcher sleeps until a signal comes (or the server ends).
    let mut incoming = Signals::new(signals).map_err(|e| Failure::io("signals", e))?;
    let incoming_handle = incoming.handle();
    let watcher_stop = stop.clone();
    let watcher = thread::Builder::new()
        .name("tinyproto-signals".into())
        .spawn(move || {
            if incoming.forever().next().is_some() {
                watcher_stop.stop();
            }
        })
        .map_err(|e| Failure::io("starting the signal watcher", e))?;

    let result = server.start();
    stop.stop();
    incoming_handle.close();
    let _ = watcher.join();
    result.map_err(|e| Failure::io("server", e))?;
    if args.mode == Mode::Sink {
        eprintln!(
            "tinyproto: received {} message(s), {} byte(s)",
            totals.messages.load(Ordering::Relaxed),
            totals.bytes.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
