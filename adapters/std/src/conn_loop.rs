//! The loop of one connection thread: the greeting, the [`Handler`] hooks in
//! the reference's order, and between messages a sleep (`sleep`'s rule)
//! that only the socket (a message begins, the peer closes), a queued
//! message or a stop ends; never a timer, unless the handler asked for a
//! `loop_pass` interval or an idle deadline is set. Also the loop's side of
//! a [`Conn`].

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tinyproto::duplex::{self, Direction};
use tinyproto::FlushPolicy;

use crate::conn::{release, Attached, Conn, RECEIVE_CHUNK};
use crate::error::{Deadline, Error};
use crate::handler::{panic_message, Handler, Take};
use crate::sleep::{sleep, Woken};

/// After a message, the thread waits this long in a read of its own for the
/// next one before it goes to sleep: a peer that answers at once (request
/// and reply) is served without a wake-up through the reactor. The kernel
/// rounds it up to a clock tick (1 to 10 ms); queued messages and a stop
/// wait at most that long.
const LINGER: Duration = Duration::from_millis(1);

/// The loop of one connection, hooks included; never panics. Runs
/// `post_loop` however the loop ends, then closes the socket.
pub(crate) fn run_connection(conn: &mut Conn, handler: &mut dyn Handler) -> Result<(), Error> {
    let result = catch_unwind(AssertUnwindSafe(|| connection_loop(conn, handler)))
        .unwrap_or_else(|payload| Err(Error::Panicked(panic_message(&*payload))));
    match &result {
        Ok(()) => log::debug!("{} ({}) ended", conn.id(), conn.peer_addr()),
        Err(e) => log::info!("{} ({}) ended: {e}", conn.id(), conn.peer_addr()),
    }
    if catch_unwind(AssertUnwindSafe(|| handler.post_loop(conn, &result))).is_err() {
        log::error!("{}: post_loop panicked", conn.id());
    }
    let _ = conn.flush();
    conn.finish();
    result
}

fn connection_loop(conn: &mut Conn, handler: &mut dyn Handler) -> Result<(), Error> {
    conn.greet()?;
    if conn.config().duplex {
        pair(conn)?;
    }
    hook(conn, |conn| handler.pre_loop(conn))?;
    let interval = conn.config().loop_pass_interval;
    let mut next_pass = interval.map(|i| Instant::now() + i);
    // One buffer for every whole message: no allocation when sizes repeat.
    let mut buf = Vec::new();
    while !conn.is_stopping() {
        deliver_held(conn, handler)?;
        match wait(conn, next_pass)? {
            Woken::Readable => {
                // The bytes are here: a look, not a wait (a wake-up whose
                // bytes this thread took itself meanwhile finds nothing and
                // goes back to sleep).
                let mut len = conn.announced(Duration::ZERO);
                // Messages that follow at once are taken without going back to
                // sleep (a stream of messages): only when nothing is there
                // does the thread wait to be woken.
                while let Some(next) = len.transpose() {
                    match next.and_then(|len| receive_one(conn, handler, &mut buf, len)) {
                        Ok(()) => {}
                        Err(e) if e.is_closed() => return Ok(()),
                        Err(e) if e.is_recoverable() && !conn.is_broken() => {
                            log::warn!("{}: message not taken: {e}", conn.id());
                        }
                        Err(e) => return Err(e),
                    }
                    if conn.is_stopping() {
                        break;
                    }
                    hook(conn, |conn| handler.loop_pass(conn))?;
                    deliver_held(conn, handler)?;
                    len = if has_mail(conn) {
                        Ok(None)
                    } else {
                        conn.announced(LINGER)
                    };
                }
            }
            Woken::Queued(queued) => send_queued(conn, queued)?,
            Woken::Timer => {
                next_pass = interval.map(|i| Instant::now() + i);
                hook(conn, |conn| handler.loop_pass(conn))?;
            }
            Woken::Stop => break,
        }
    }
    // Stopping: what other connections queued (and were told was queued)
    // still goes out.
    let queued = match conn.attached() {
        Some(a) => std::mem::take(&mut a.mailbox.lock().queued),
        None => VecDeque::new(),
    };
    send_queued(conn, queued)?;
    deliver_held(conn, handler)
}

/// Hands the messages that `transmit` took because they arrived as one of
/// ours was due (the peer's, in the order they came) to the handler, as if
/// each was announced now. They were accepted already: a handler that
/// rejects one only drops it.
fn deliver_held(conn: &mut Conn, handler: &mut dyn Handler) -> Result<(), Error> {
    while let Some(msg) = conn.take_held() {
        let len = msg.len() as u32;
        match handler.message_announced(conn, len) {
            Take::Whole => hook(conn, |conn| handler.transmission_received(conn, &msg))?,
            Take::Chunks => hook(conn, |conn| {
                for chunk in msg.chunks(RECEIVE_CHUNK) {
                    handler.transmission_chunk(chunk)?;
                }
                handler.transmission_complete(conn, len)
            })?,
            Take::Reject => log::info!(
                "{}: dropped a message of {len} bytes that arrived as ours was due \
                 (the handler rejects it; the peer was told it arrived)",
                conn.id()
            ),
            Take::Refuse(reason) if reason.is_recoverable() => log::info!(
                "{}: dropped a message of {len} bytes that arrived as ours was due \
                 (the handler refuses it: {reason}; the peer was told it arrived)",
                conn.id()
            ),
            Take::Refuse(reason) => return Err(reason),
        }
    }
    Ok(())
}

/// On a duplex server: takes the connection's hello, within the greeting
/// deadline, and registers which half of which link it is; a down half is
/// told so, and from then on messages may go to it.
fn pair(conn: &mut Conn) -> Result<(), Error> {
    let wait = conn.config().timeouts.greeting;
    let hello = conn
        .try_receive(wait)?
        .ok_or(Error::Timeout(Deadline::Greeting))?;
    let (direction, pair) = duplex::parse_hello(&hello).ok_or(Error::NotDuplex)?;
    if direction == Direction::Down {
        conn.transmit(duplex::WELCOME)?;
    }
    conn.set_direction(direction);
    if let Some(attached) = conn.attached() {
        attached.shared.set_half(conn.id(), direction, pair);
    }
    log::debug!(
        "{}: {direction:?} half of duplex link {pair:032x}",
        conn.id()
    );
    Ok(())
}

/// Transmits what other connections queued, in order, flushed at the end.
fn send_queued(conn: &mut Conn, queued: VecDeque<Arc<[u8]>>) -> Result<(), Error> {
    if queued.is_empty() {
        return Ok(());
    }
    hook(conn, |conn| {
        for msg in queued {
            match conn.transmit(&msg) {
                Err(e) if e.is_recoverable() => {
                    log::warn!("{}: queued message not delivered: {e}", conn.id())
                }
                other => other?,
            }
        }
        Ok(())
    })
}

/// True when other connections queued messages for this one, or a stop came.
fn has_mail(conn: &Conn) -> bool {
    conn.attached()
        .is_some_and(|a| a.mailbox.is_draining() || !a.mailbox.lock().queued.is_empty())
}

/// Takes the message whose length `len` was just read as the handler
/// decides: whole, in chunks, or rejected.
fn receive_one(
    conn: &mut Conn,
    handler: &mut dyn Handler,
    buf: &mut Vec<u8>,
    len: u32,
) -> Result<(), Error> {
    let take = match handler.message_announced(conn, len) {
        Take::Chunks if conn.has_plugins() => Take::Refuse(Error::Plugin(
            "plugins need whole messages: no chunks with plugins".into(),
        )),
        take => take,
    };
    match take {
        Take::Whole => {
            let limit = conn.max_message_len();
            // Its room in the budget is given back (and the buffer released,
            // if large) once the handler returned.
            let result = match conn.receive_whole(len, limit, buf) {
                Ok(_lease) => hook(conn, |conn| handler.transmission_received(conn, buf)),
                Err(e) => Err(e),
            };
            release(buf);
            result
        }
        Take::Chunks => {
            let len = conn.receive_chunks(len, tinyproto::MAX_MESSAGE_LEN, &mut |chunk| {
                handler.transmission_chunk(chunk)
            })?;
            hook(conn, |conn| handler.transmission_complete(conn, len))
        }
        Take::Reject => {
            conn.reject_announced()?;
            log::info!("{}: rejected a message of {len} bytes", conn.id());
            Ok(())
        }
        // The loop logs a recoverable reason and goes on; any other ends it.
        Take::Refuse(reason) => {
            conn.reject_announced()?;
            Err(reason)
        }
    }
}

/// Runs a hook. Inside it the end of one message may wait for the next
/// (back-to-back transmits leave together); when it returns, everything is
/// written out. An error after which the connection is still in step (a
/// rejection, a plugin's refusal, a `receive` wait) is logged and the loop
/// goes on.
fn hook(conn: &mut Conn, f: impl FnOnce(&mut Conn) -> Result<(), Error>) -> Result<(), Error> {
    conn.set_batching(true);
    let result = f(conn);
    conn.set_batching(false);
    let flushed = conn.flush();
    match result.and(flushed) {
        // A hook's own read found the peer gone between messages: a normal end.
        Err(e) if e.is_closed() => {
            conn.stop();
            Ok(())
        }
        Err(e) if e.is_recoverable() && !conn.is_broken() => {
            log::info!("{}: {e} (the connection goes on)", conn.id());
            Ok(())
        }
        other => other,
    }
}

/// Sleeps until the socket has bytes, a message is queued, a stop, or
/// `next_pass`; fails when the idle deadline passes first.
fn wait(conn: &mut Conn, next_pass: Option<Instant>) -> Result<Woken, Error> {
    let ahead = conn.has_input_ahead();
    let Some(attached) = conn.attached() else {
        return Ok(Woken::Stop);
    };
    let idle = conn
        .config()
        .timeouts
        .idle
        .map(|idle| conn.last_activity() + idle);
    let until = match (next_pass, idle) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let woken = sleep(
        &attached.mailbox,
        &attached.readiness,
        conn.id(),
        &conn.shared_socket(),
        ahead,
        until,
    )?;
    if matches!(woken, Woken::Timer) && idle.is_some_and(|idle| Instant::now() >= idle) {
        return Err(Error::Timeout(Deadline::Idle));
    }
    Ok(woken)
}

/// The loop's side of a connection.
impl Conn {
    pub(crate) fn attach(&mut self, attached: Attached) {
        self.attached = Some(attached);
    }

    pub(crate) fn attached(&self) -> Option<&Attached> {
        self.attached.as_ref()
    }

    fn set_direction(&mut self, direction: Direction) {
        self.direction = Some(direction);
    }

    /// True when bytes of the peer's were read ahead and wait to be used:
    /// no readiness would report them.
    fn has_input_ahead(&mut self) -> bool {
        self.transport().has_input()
    }

    pub(crate) fn config(&self) -> &crate::config::Config {
        &self.cfg
    }

    fn has_plugins(&self) -> bool {
        !self.cfg.plugins.is_empty()
    }

    /// A message that the peer had begun to send as ours was due, held by
    /// [`transmit`](Conn::transmit) for the handler.
    fn take_held(&mut self) -> Option<Vec<u8>> {
        self.held.pop_front()
    }

    /// Lets the end of a message wait for the next one (or the next
    /// flush): the loop sets this around its hooks.
    fn set_batching(&mut self, batching: bool) {
        self.inner.set_flush_policy(if batching {
            FlushPolicy::BeforeRead
        } else {
            FlushPolicy::EachMessage
        });
    }
}
