//! `tinyproto serve`: a [`tinyproto_std::Server`] with an echo, sink or print
//! handler, stopped gracefully on SIGINT/SIGTERM.
//!
//! Listening, one thread per connection, the connection limit (0xFE), the
//! message limit (0x00), deadlines and the graceful stop are the std
//! adapter's; this module only maps the command line onto it. `--sink` and
//! `--print` stream each message in chunks (see [`crate::streaming`], a
//! stopgap until the adapter has a chunked receive hook); `--echo` holds
//! whole messages, up to `--max-message` (16 MiB unless given).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tinyproto_std::{Conn, Error, Handler, Server, Timeouts};

use crate::exit::{self, Failure};
use crate::streaming::{Output, Streaming};
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
    fn transmission_received(&mut self, conn: &mut Conn, msg: Vec<u8>) -> Result<(), Error> {
        conn.transmit(&msg)
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
    let streamed = |output: Output| {
        let handler = Streaming {
            output,
            max_message: args.max_message.unwrap_or(MAX_MESSAGE_LEN),
            timeout: args.timeout,
        };
        move || Streaming {
            output: handler.output.clone(),
            ..handler
        }
    };
    match args.mode {
        Mode::Echo => server.set_conn_handler(|| Echo),
        Mode::Sink => server.set_conn_handler(streamed(Output::Sink(Arc::clone(&totals)))),
        // Each message holds stdout while it streams: messages of several
        // connections never interleave.
        Mode::Print => server.set_conn_handler(streamed(Output::Print)),
    }
    server.set_connection_limit(args.max_connections);
    // Echo holds whole messages: the adapter's default limit (16 MiB) stands
    // unless given. Sink and print stream, and take the protocol's largest.
    if let Some(len) = args.max_message {
        server.set_max_message_len(len);
    }
    if let Some(t) = args.timeout {
        // The adapter bounds a whole message (`--echo` holds whole ones,
        // up to --max-message); the streaming modes bound each read instead.
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
