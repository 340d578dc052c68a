//! Streamed receiving for `serve --sink` and `serve --print`: messages are
//! taken in chunks, so memory stays bounded whatever their size.
//!
//! **Stopgap, to be moved onto tinyproto-std.** The std adapter's [`Handler`]
//! hands over whole messages (`Vec<u8>`), so a 1 GiB message would cost the
//! server 1 GiB. Until the adapter offers a chunked receive hook, the sink
//! and print handlers take their connection over in `pre_loop` (after the
//! adapter's greeting) and run the core's chunked receive
//! ([`tinyproto::blocking::Connection::begin_receive`]) on a clone of the
//! socket themselves. The adapter still accepts, counts the connection
//! against `--max-connections`, greets, runs `post_loop`, and stops: the loop
//! here looks at [`Conn::is_stopping`] at least every [`POLL`] between
//! messages, and a forced close of the socket ends it.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedded_io_adapters::std::FromStd;
use tinyproto::blocking::Connection;
use tinyproto_std::{Conn, Deadline, Error, Handler};

use crate::exit::is_timeout;
use crate::serve::Totals;

/// Longest wait for a message to begin before looking for a stop.
const POLL: Duration = Duration::from_millis(50);
/// Read chunk.
const CHUNK: usize = 64 * 1024;

/// What to do with the chunks of each message.
#[derive(Debug, Clone)]
pub enum Output {
    /// Count them.
    Sink(Arc<Totals>),
    /// Write them to stdout.
    Print,
}

/// The handler of `--sink` and `--print`.
#[derive(Debug)]
pub struct Streaming {
    /// Where the chunks go.
    pub output: Output,
    /// Longest accepted message.
    pub max_message: u32,
    /// Idle limit between messages and inactivity limit within one.
    pub timeout: Option<Duration>,
}

/// The socket as the core sees it, with the greeting already exchanged by
/// the adapter: the core's own greeting is answered here without touching
/// the wire.
struct Greeted {
    stream: TcpStream,
    owe_write: bool,
    owe_read: bool,
}

impl Read for Greeted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.owe_read && !buf.is_empty() {
            self.owe_read = false;
            buf[0] = tinyproto::GREETING;
            return Ok(1);
        }
        self.stream.read(buf)
    }
}

impl Write for Greeted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.owe_write && buf.first() == Some(&tinyproto::GREETING) {
            self.owe_write = false;
            return Ok(1);
        }
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Handler for Streaming {
    fn pre_loop(&mut self, conn: &mut Conn) -> Result<(), Error> {
        let stream = conn.tcp_stream().try_clone()?;
        // Socket options are the socket's: set through this clone, they hold
        // for the one the core reads.
        let options = stream.try_clone()?;
        options.set_write_timeout(self.timeout)?;
        let mut core = Connection::from_std(Greeted {
            stream,
            owe_write: true,
            owe_read: true,
        });
        core.set_max_message_len(self.max_message);
        core.greet()?;
        let result = self.serve(conn, &mut core, &options);
        // Done here: the adapter's loop ends at once and runs `post_loop`.
        conn.stop();
        match result {
            Err(Error::Protocol(tinyproto::Error::Closed)) => Ok(()),
            other => other,
        }
    }
}

impl Streaming {
    fn serve(
        &mut self,
        conn: &mut Conn,
        core: &mut Connection<FromStd<Greeted>>,
        options: &TcpStream,
    ) -> Result<(), Error> {
        let mut buf = vec![0u8; CHUNK];
        let mut idle_since = Instant::now();
        while !conn.is_stopping() {
            // Between messages, wake up often enough to see a stop.
            let wait = self.timeout.map_or(POLL, |t| t.min(POLL));
            options.set_read_timeout(Some(wait))?;
            let mut msg = match core.begin_receive(self.max_message) {
                Ok(msg) => msg,
                Err(tinyproto::Error::Io(e)) if is_timeout(&e) => {
                    // Nothing (or only part of a length) since the last
                    // message: the idle limit covers both.
                    if self.timeout.is_some_and(|t| idle_since.elapsed() >= t) {
                        return Err(Error::Timeout(if core.is_in_progress() {
                            Deadline::Message
                        } else {
                            Deadline::Idle
                        }));
                    }
                    continue;
                }
                Err(e @ tinyproto::Error::TooLarge { .. }) => {
                    log::warn!("{}: refused a message: {e}", conn.id());
                    idle_since = Instant::now();
                    continue;
                }
                Err(e) => return Err(self.fail(e)),
            };
            // Inside a message: every read may wait `--timeout`.
            options.set_read_timeout(self.timeout)?;
            let len = u64::from(msg.len());
            let mut stdout = match self.output {
                Output::Print => Some(io::stdout().lock()),
                Output::Sink(_) => None,
            };
            loop {
                let n = match msg.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => return Err(self.fail(e)),
                };
                if n == 0 {
                    break;
                }
                if let Some(out) = stdout.as_mut() {
                    out.write_all(&buf[..n])?;
                }
            }
            if let Some(out) = stdout.as_mut() {
                out.flush()?;
            }
            if let Output::Sink(totals) = &self.output {
                totals.messages.fetch_add(1, Ordering::Relaxed);
                totals.bytes.fetch_add(len, Ordering::Relaxed);
            }
            idle_since = Instant::now();
        }
        Ok(())
    }

    fn fail(&self, e: tinyproto::Error<io::Error>) -> Error {
        match e {
            tinyproto::Error::Io(e) if is_timeout(&e) => Error::Timeout(Deadline::Message),
            e => Error::Protocol(e),
        }
    }
}
