//! `tinyproto serve`: a [`tinyproto_std::Server`] with an echo, sink or print
//! handler, stopped gracefully on SIGINT/SIGTERM.
//!
//! Listening, one thread per connection, the connection limit (0xFE), the
//! message limit (0x00), deadlines and the graceful stop are the std
//! adapter's; this module only maps the command line onto it. `--sink` and
//! `--print` take each message in chunks ([`Take::Chunks`]), so
//! memory stays bounded whatever the size; `--echo` holds whole messages, up
//! to `--max-message` (16 MiB unless given).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use tinyproto_std::{Conn, Error, Handler, Server, Take, Timeouts};

use crate::exit::{self, Failure};
use tinyproto::MAX_MESSAGE_LEN;

/// How often the signal watcher looks at the flag.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

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
    /// Greeting, write and idle deadline.
    pub timeout: Option<Duration>,
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

struct Echo;

impl Handler for Echo {
    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        conn.transmit(msg)
    }
}

/// Counts and discards, taking messages in chunks.
struct Sink {
    totals: Arc<Totals>,
    limit: u32,
}

impl Handler for Sink {
    fn message_announced(&mut self, _conn: &Conn, len: u32) -> Take {
        if len <= self.limit {
            Take::Chunks
        } else {
            Take::Reject
        }
    }

    fn transmission_complete(&mut self, _conn: &mut Conn, len: u32) -> Result<(), Error> {
        self.totals.messages.fetch_add(1, Ordering::Relaxed);
        self.totals
            .bytes
            .fetch_add(u64::from(len), Ordering::Relaxed);
        Ok(())
    }
}

/// Whose message is on stdout: one message at a time, so messages of
/// several connections never interleave (a stdout lock cannot be held across
/// chunks: it is not `Send`).
#[derive(Debug, Default)]
struct Turn {
    busy: Mutex<bool>,
    free: Condvar,
}

impl Turn {
    fn take(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = self.free.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
    }

    fn give_back(&self) {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.free.notify_one();
    }
}

/// Writes each message, raw, to stdout as its chunks arrive.
struct Print {
    turn: Arc<Turn>,
    holding: bool,
    limit: u32,
}

impl Print {
    fn release(&mut self) {
        if self.holding {
            self.holding = false;
            self.turn.give_back();
        }
    }
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
        if !self.holding {
            self.turn.take();
            self.holding = true;
        }
        io::stdout().lock().write_all(chunk)?;
        Ok(())
    }

    fn transmission_complete(&mut self, _conn: &mut Conn, _len: u32) -> Result<(), Error> {
        let flushed = io::stdout().lock().flush();
        self.release();
        Ok(flushed?)
    }

    fn post_loop(&mut self, _conn: &mut Conn, _result: &Result<(), Error>) {
        // A message that broke off leaves its bytes printed; free stdout.
        self.release();
    }
}

/// Runs `serve` until SIGINT or SIGTERM.
pub fn run(args: &ServeArgs) -> Result<(), Failure> {
    let mut server = Server::new();
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
    match args.mode {
        Mode::Echo => server.set_conn_handler(|| Echo),
        Mode::Sink => {
            let totals = Arc::clone(&totals);
            server.set_conn_handler(move || Sink {
                totals: Arc::clone(&totals),
                limit,
            });
        }
        Mode::Print => {
            let turn = Arc::new(Turn::default());
            server.set_conn_handler(move || Print {
                turn: Arc::clone(&turn),
                holding: false,
                limit,
            });
        }
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
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping ends the process at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&signalled))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&signalled)))
            .map_err(|e| Failure::io("installing the signal handler", e))?;
    }
    let watcher_stop = stop.clone();
    let watcher = thread::Builder::new()
        .name("tinyproto-signals".into())
        .spawn(move || {
            while !signalled.load(Ordering::SeqCst) && !watcher_stop.is_stopped() {
                thread::sleep(SIGNAL_POLL);
            }
            watcher_stop.stop();
        })
        .map_err(|e| Failure::io("starting the signal watcher", e))?;

    let result = server.start();
    stop.stop();
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
