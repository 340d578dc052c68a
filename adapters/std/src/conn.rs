//! One connection: [`Conn`], whole messages in and out with deadlines and
//! plugins, over the core's blocking driver.
//!
//! Writes wait in a buffer, flushed by the core's [`FlushPolicy`]: each
//! message is written out before its call returns
//! ([`EachMessage`](FlushPolicy::EachMessage)), except inside a connection
//! loop's hooks and [`Conn::transmit_all`], which switch to
//! [`BeforeRead`](FlushPolicy::BeforeRead) so the end of one message and the
//! length of the next leave together; the loop flushes whenever a hook
//! returns.

use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedded_io_adapters::std::FromStd;
use tinyproto::blocking::Connection;
use tinyproto::std_io::WriteBuffered;
use tinyproto::FlushPolicy;

use crate::budget::{Lease, NoRoom};
use crate::config::SharedConfig;
use crate::connections::{Connections, Mailbox, Shared, StopHandle};
use crate::duplex::Direction;
use crate::error::{Deadline, Error, ProtocolError};
use crate::id::ConnId;
use crate::io::Io;
use crate::reactor::Readiness;

/// Payload bytes read per step of a receive, at most: the size of a chunk.
pub(crate) const RECEIVE_CHUNK: usize = 64 * 1024;

/// The first step of a whole message's buffer; each later one is at most
/// as large as what arrived before it, so the buffer never holds more than
/// twice the bytes that came (and never more than the message).
const FIRST_STEP: usize = 4 * 1024;

/// A message buffer larger than this is released once its message is done.
/// An idle connection keeps at most this, its 16 KiB write buffer and its
/// read-ahead: under 64 KiB, whatever it received before.
const KEPT_BUFFER: usize = 16 * 1024;

/// At most this many of the peer's messages are taken (or refused) before
/// one of ours goes out.
const MAX_TAKEN_BEFORE_SEND: usize = 64;

/// A look at the socket before a send costs three system calls; when the
/// read that ended the peer's last message found the socket empty less
/// than this long ago, it stands in for the look (a handler answering at
/// once). A message the peer begins in so short a window
/// crosses ours with about the odds of one that begins between a look and
/// our length: the look narrows the window, it cannot close it.
const FRESH_DRAIN: Duration = Duration::from_micros(200);

/// A failure inside a receive or chunked transmit: the core's, or the
/// caller's (a chunk consumer or source).
enum RawError {
    Core(ProtocolError),
    Sink(Error),
}

impl From<ProtocolError> for RawError {
    fn from(e: ProtocolError) -> Self {
        RawError::Core(e)
    }
}

/// What a connection loop is attached to (absent for a plain client
/// connection).
#[derive(Debug)]
pub(crate) struct Attached {
    pub(crate) shared: Arc<Shared>,
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) readiness: Arc<Readiness>,
}

/// A connected, tinyproto-speaking TCP connection.
///
/// Every call is bounded by the [`Timeouts`](crate::Timeouts) it was
/// created with. Messages are whole: nothing of a partial message is ever
/// returned, and the buffer of an incoming message grows only as its bytes
/// actually arrive (never to a length the peer merely announced).
pub struct Conn {
    id: ConnId,
    inner: Connection<FromStd<WriteBuffered<Io>>>,
    peer: SocketAddr,
    local: SocketAddr,
    cfg: SharedConfig,
    /// Payload of the message being received by `receive`.
    partial: Vec<u8>,
    /// The memory budget's lease on `partial`'s message, from its length on.
    lease: Option<Lease>,
    /// Buffer of chunked receives and transmits (allocated for each one).
    scratch: Vec<u8>,
    /// Messages the peer had begun to send when this side was about to
    /// send: taken first (so that neither side reads the other's length as
    /// an answer), they wait here for the next receive or the loop's
    /// handler. At most `max_message_len` bytes in all.
    held: VecDeque<Vec<u8>>,
    started: Instant,
    last_activity: Instant,
    /// The last message that moved was the peer's: a send now answers it.
    received_last: bool,
    /// A deadline ran out mid-message or the protocol broke: carry nothing more.
    failed: bool,
    /// Which half of a duplex link this is (set by a duplex server's loop).
    direction: Option<Direction>,
    stop: bool,
    /// The registry and stop handle of the server or client this
    /// connection belongs to.
    owner: Owner,
    attached: Option<Attached>,
}

/// What a connection reaches of the server or client it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub(crate) connections: Connections,
    pub(crate) stop: StopHandle,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("protocol", self.inner.machine())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Wraps a connected stream. Never fails: a socket that was reset
    /// already fails at the greeting, with a typed error its handler sees.
    pub(crate) fn new(
        id: ConnId,
        stream: TcpStream,
        peer: SocketAddr,
        cfg: SharedConfig,
        owner: Owner,
    ) -> Self {
        if let Err(e) = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_nodelay(cfg.nodelay))
        {
            log::debug!("{id}: socket options not set: {e}");
        }
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let io = Io::new(Arc::new(stream), cfg.timeouts.write);
        let mut inner = Connection::new(FromStd::new(WriteBuffered::new(io)));
        inner.set_flush_policy(FlushPolicy::EachMessage);
        inner.set_max_message_len(cfg.max_message_len);
        let now = Instant::now();
        Self {
            id,
            inner,
            peer,
            local,
            cfg,
            partial: Vec::new(),
            lease: None,
            scratch: Vec::new(),
            held: VecDeque::new(),
            started: now,
            last_activity: now,
            received_last: false,
            failed: false,
            direction: None,
            stop: false,
            owner,
            attached: None,
        }
    }

    pub(crate) fn attach(&mut self, attached: Attached) {
        self.attached = Some(attached);
    }

    pub(crate) fn attached(&self) -> Option<&Attached> {
        self.attached.as_ref()
    }

    fn io(&mut self) -> &mut Io {
        self.inner.get_mut().inner_mut().get_mut()
    }

    /// The socket, shared with the registry.
    pub(crate) fn shared_stream(&self) -> Arc<TcpStream> {
        self.inner.get_ref().inner().get_ref().stream().clone()
    }

    /// This connection's id (unique within its server or client).
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// This side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The socket, for options (moving bytes through it directly puts the
    /// connection out of step).
    pub fn tcp_stream(&self) -> &TcpStream {
        self.inner.get_ref().inner().get_ref().stream()
    }

    /// True after a deadline ran out mid-message or the protocol broke:
    /// the connection carries nothing more.
    pub fn is_broken(&self) -> bool {
        self.failed
    }

    /// On a duplex server, which half of its [`Duplex`](crate::Duplex) link
    /// this connection is; `None` elsewhere.
    pub fn direction(&self) -> Option<Direction> {
        self.direction
    }

    pub(crate) fn set_direction(&mut self, direction: Direction) {
        self.direction = Some(direction);
    }

    /// True when bytes of the peer's were read ahead and wait to be used.
    pub(crate) fn has_input_ahead(&self) -> bool {
        self.inner.get_ref().inner().get_ref().has_input()
    }

    pub(crate) fn config(&self) -> &crate::config::Config {
        &self.cfg
    }

    pub(crate) fn has_plugins(&self) -> bool {
        !self.cfg.plugins.is_empty()
    }

    /// The largest message length this side accepts whole.
    pub fn max_message_len(&self) -> u32 {
        self.cfg.max_message_len
    }

    /// When the last message moved either way (or the connection started).
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// The active connections of the server or client this connection
    /// belongs to: every connection of a server; a client's
    /// [`connect_to`](crate::Client::connect_to) connections (a plain
    /// [`Client::connect`](crate::Client::connect) connection is not among
    /// them: it runs no loop that could send what is queued for it).
    pub fn active_connections(&self) -> Connections {
        self.owner.connections.clone()
    }

    /// Stops the loop of the server or client this connection belongs to.
    pub fn loop_stop_handle(&self) -> StopHandle {
        self.owner.stop.clone()
    }

    /// Asks this connection's loop to end after the current hook (with
    /// `Ok(())`; `post_loop` runs).
    pub fn stop(&mut self) {
        self.stop = true;
    }

    /// True once [`stop`](Self::stop) was called or the owner is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stop
            || self
                .attached
                .as_ref()
                .is_some_and(|a| a.shared.is_draining())
    }

    /// Exchanges the greeting, within [`Timeouts::greeting`](crate::Timeouts::greeting)
    /// of the connection's start. Done by every other call first.
    pub fn greet(&mut self) -> Result<(), Error> {
        self.check_usable()?;
        if self.inner.is_greeted() {
            return Ok(());
        }
        let deadline = self.started + self.cfg.timeouts.greeting;
        let io = self.io();
        io.set_read_deadline(deadline, Deadline::Greeting);
        io.set_write_deadline(Some((deadline, Deadline::Greeting)));
        let result = self.inner.greet();
        result.map_err(|e| self.fail(e))
    }

    /// Writes this side's greeting byte at once, without waiting for the
    /// peer's: a server does it as it accepts, so that a client's greeting
    /// completes without waiting for the connection's thread to start.
    pub(crate) fn send_greeting(&mut self) {
        let deadline = self.started + self.cfg.timeouts.greeting;
        let io = self.io();
        // Writes 0xFF and flushes; the read of the peer's byte then fails at
        // once, without a look at the socket, and `greet` resumes it later.
        io.refuse_reads(Deadline::Greeting);
        io.set_write_deadline(Some((deadline, Deadline::Greeting)));
        match self.inner.greet() {
            Ok(()) | Err(tinyproto::Error::Io(_)) => {
                self.io().take_expired();
            }
            Err(e) => {
                let e = self.fail(e);
                log::debug!("{}: greeting failed at once: {e}", self.id);
            }
        }
    }

    /// Sends one whole message (through the plugins), within
    /// [`Timeouts::message`](crate::Timeouts::message), and returns once it
    /// is written out (inside a loop's hook: once it is in the buffer the
    /// loop flushes when the hook returns).
    ///
    /// `Err(Error::Protocol(tinyproto::Error::Rejected { .. }))` when the
    /// peer refused its length: a normal answer; the connection stays usable.
    ///
    /// **Who may send when.** The protocol is half-duplex: one message at a
    /// time on a connection. Right before our length goes out, a message the
    /// peer has begun to send is taken first, whole (up to
    /// [`max_message_len`](Self::max_message_len)), and held for the next
    /// [`receive`](Self::receive) or [`try_receive`](Self::try_receive) (in a
    /// connection loop: for the handler); then ours is sent. Only a peer that
    /// starts at the very moment ours leaves can cross it: then both sides
    /// read the other's length where an answer is due, and this side reports
    /// `Error::Protocol(tinyproto::Error::Conflict)` (never a rejection it
    /// can tell is none) and closes the connection at once. Peers that both
    /// send at any time take turns, or use one connection per direction.
    pub fn transmit(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.before_send()?;
        let wire = self.cfg.plugins.transmit(msg).map_err(Error::Plugin)?;
        self.arm_message_deadline();
        let result = self.inner.transmit(&wire);
        self.io().set_write_deadline(None);
        match self.answered(result) {
            Ok(()) => {
                self.message_moved(false);
                log::trace!("{} sent {} bytes", self.id, wire.len());
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Greets, then takes any message the peer has begun to send, so that
    /// ours starts only when nothing of the peer's is arriving.
    fn before_send(&mut self) -> Result<(), Error> {
        if self.direction == Some(Direction::Up) {
            return Err(Error::UpHalf);
        }
        self.greet()?;
        if self.received_last && self.io().drained_within(FRESH_DRAIN) {
            return Ok(());
        }
        // Bounded: a peer that keeps sending refused messages cannot hold
        // ours back for ever (what crosses it then is a conflict).
        for _ in 0..MAX_TAKEN_BEFORE_SEND {
            if self.inner.is_in_progress() {
                break;
            }
            let waiting = self.io().look();
            match waiting {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(self.fail(tinyproto::Error::Io(e))),
            }
            let held: usize = self.held.iter().map(Vec::len).sum();
            let room = (self.cfg.max_message_len as usize).saturating_sub(held) as u32;
            match self.receive_now(Duration::ZERO, room) {
                Ok(Some(msg)) => {
                    log::debug!(
                        "{}: took a message of {} bytes that arrived as ours was due",
                        self.id,
                        msg.len()
                    );
                    self.held.push_back(msg);
                }
                Ok(None) => return Ok(()),
                Err(e) if e.is_recoverable() && !self.failed => {
                    log::info!("{}: a message that arrived as ours was due: {e}", self.id);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The core's verdict on our length, with what the transport shows: a
    /// 0x00 with the rest of one length right behind it (and nothing more)
    /// is the peer's own length, not a rejection.
    fn answered(&mut self, result: Result<(), ProtocolError>) -> Result<(), ProtocolError> {
        match result {
            Err(tinyproto::Error::Rejected { .. }) if self.peer_length_behind() => {
                Err(tinyproto::Error::Conflict)
            }
            other => other,
        }
    }

    /// The core's [`zero_answer_is_a_length`](tinyproto::zero_answer_is_a_length)
    /// over what is read ahead, looked for if too little is.
    fn peer_length_behind(&mut self) -> bool {
        let io = self.io();
        let behind = match io.ahead_len() {
            n if n >= tinyproto::LENGTH_FIELD_LEN - 1 => n,
            _ => io.look().unwrap_or(0),
        };
        tinyproto::zero_answer_is_a_length(behind)
    }

    /// Sends messages back to back, each whole, and returns how many went:
    /// the end of one and the length of the next leave together (a stream of
    /// small messages at the protocol's limit). Stops at the first error,
    /// after flushing what went (a rejection is an error here too: its
    /// count says which message it was).
    pub fn transmit_all<'m>(
        &mut self,
        msgs: impl IntoIterator<Item = &'m [u8]>,
    ) -> Result<usize, (usize, Error)> {
        let policy = self.inner.machine().flush_policy();
        self.inner.set_flush_policy(FlushPolicy::BeforeRead);
        let mut sent = 0;
        let mut result = Ok(());
        for msg in msgs {
            result = self.transmit(msg);
            if result.is_err() {
                break;
            }
            sent += 1;
        }
        self.inner.set_flush_policy(policy);
        let flushed = if self.failed { Ok(()) } else { self.flush() };
        result.and(flushed).map(|()| sent).map_err(|e| (sent, e))
    }

    /// Writes out whatever waits in the connection's buffer.
    pub fn flush(&mut self) -> Result<(), Error> {
        if !self.inner.machine().needs_flush() || self.failed {
            return Ok(());
        }
        self.arm_message_deadline();
        let result = self.inner.flush();
        self.io().set_write_deadline(None);
        result.map_err(|e| self.fail(e))
    }

    /// Lets the end of a message wait for the next one (or the next
    /// flush): the loop sets this around its hooks.
    pub(crate) fn set_batching(&mut self, batching: bool) {
        self.inner.set_flush_policy(if batching {
            FlushPolicy::BeforeRead
        } else {
            FlushPolicy::EachMessage
        });
    }

    /// Receives one whole message (through the plugins): waits up to
    /// [`Timeouts::receive`](crate::Timeouts::receive) for it to begin, then
    /// up to [`Timeouts::message`](crate::Timeouts::message) for all of it.
    ///
    /// A length over [`max_message_len`](Self::max_message_len) is answered
    /// 0x00 and reported as `Error::Protocol(tinyproto::Error::TooLarge { .. })`;
    /// the connection stays usable. `Error::Protocol(tinyproto::Error::Closed)`
    /// when the peer closed between messages.
    pub fn receive(&mut self) -> Result<Vec<u8>, Error> {
        let wait = self.cfg.timeouts.receive;
        self.try_receive(wait)?
            .ok_or(Error::Timeout(Deadline::Receive))
    }

    /// Like [`receive`](Self::receive), but waits only `wait` for a message
    /// to begin, and returns `Ok(None)` if none did (the connection stays
    /// usable). A message that began is always received whole or not at all.
    ///
    /// A message held by [`transmit`](Self::transmit) (one the peer had
    /// begun to send as ours was due) comes first, without a wait. A zero
    /// `wait` looks at the socket once without waiting.
    pub fn try_receive(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, Error> {
        if let Some(msg) = self.held.pop_front() {
            return Ok(Some(msg));
        }
        self.receive_now(wait, self.cfg.max_message_len)
    }

    /// A message that the peer had begun to send as ours was due, held by
    /// [`transmit`](Self::transmit) for the loop's handler.
    pub(crate) fn take_held(&mut self) -> Option<Vec<u8>> {
        self.held.pop_front()
    }

    /// Receives a message from the socket (not from `held`): a length over
    /// `limit` is answered 0x00.
    fn receive_now(&mut self, wait: Duration, limit: u32) -> Result<Option<Vec<u8>>, Error> {
        if self.lease.is_none() && self.inner.machine().remaining() == 0 {
            let Some(len) = self.announced(wait)? else {
                return Ok(None);
            };
            if len <= limit {
                self.lease = Some(self.lease_for(len, len.into())?);
            }
            self.partial.clear();
        }
        let Some(_len) = self.wait_for_message(wait, |conn| {
            let mut partial = std::mem::take(&mut conn.partial);
            let result = conn.receive_raw(limit, &mut partial);
            conn.partial = partial;
            result
        })?
        else {
            return Ok(None);
        };
        let raw = std::mem::take(&mut self.partial);
        // The caller owns the message now: it is not in flight any more.
        self.lease = None;
        log::trace!("{} received {} bytes", self.id, raw.len());
        let msg = self.cfg.plugins.receive(raw).map_err(Error::Plugin)?;
        Ok(Some(msg))
    }

    /// Receives one message in chunks, for messages larger than memory:
    /// `on_chunk` gets each piece as it arrives (at most 64 KiB each), in
    /// order. Waits up to [`Timeouts::receive`](crate::Timeouts::receive)
    /// for the message to begin and [`Timeouts::message`](crate::Timeouts::message)
    /// for all of it; returns its length.
    ///
    /// Lengths over `limit` are answered 0x00 and reported as `TooLarge`;
    /// the connection stays usable. (The configured
    /// [`max_message_len`](Self::max_message_len) caps whole messages only.)
    /// If the message breaks off (an error, a deadline, or `on_chunk`
    /// failing), the chunks already handed over are all there will be:
    /// discard them. Plugins transform whole messages, so this fails with
    /// [`Error::Plugin`] when any is registered.
    pub fn receive_chunked(
        &mut self,
        limit: u32,
        on_chunk: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<u32, Error> {
        let wait = self.cfg.timeouts.receive;
        self.try_receive_chunked(wait, limit, on_chunk)?
            .ok_or(Error::Timeout(Deadline::Receive))
    }

    /// Like [`receive_chunked`](Self::receive_chunked), but waits only
    /// `wait` for a message to begin, and returns `Ok(None)` if none did.
    pub fn try_receive_chunked(
        &mut self,
        wait: Duration,
        limit: u32,
        mut on_chunk: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<Option<u32>, Error> {
        self.check_no_plugins("receive")?;
        let Some(len) = self.announced(wait)? else {
            return Ok(None);
        };
        // Over the limit, the receive answers 0x00: no buffer.
        let _lease = if len <= limit {
            Some(self.lease_for(len, chunk_buffer_len(len))?)
        } else {
            None
        };
        let result =
            self.wait_for_message(wait, |conn| conn.receive_chunks_raw(limit, &mut on_chunk));
        self.scratch = Vec::new();
        result
    }

    /// Waits up to `wait` for a message to begin, and reads its length
    /// (not answered yet).
    fn announced(&mut self, wait: Duration) -> Result<Option<u32>, Error> {
        self.wait_for_message(wait, |conn| Ok(conn.inner.next_length()?))
    }

    /// Takes `bytes` from the memory budget for the message of `len` bytes
    /// whose length was just read, waiting for room until the message
    /// deadline; without room then (or ever), answers 0x00.
    pub(crate) fn lease_for(&mut self, len: u32, bytes: u64) -> Result<Lease, Error> {
        let start = self.io().first_byte().unwrap_or_else(Instant::now);
        let deadline = start + self.cfg.timeouts.message;
        let budget = self.cfg.budget.clone();
        match budget.lease(bytes, deadline, || self.is_stopping()) {
            Ok(lease) => Ok(lease),
            Err(why) => {
                self.reject_announced()?;
                let why = match why {
                    NoRoom::OverBudget => "larger than the whole budget",
                    NoRoom::NoRoomInTime => "no room in time",
                };
                log::info!("{}: refused a message of {len} bytes: {why}", self.id);
                Err(Error::MemoryBudget {
                    len,
                    budget: budget.limit(),
                })
            }
        }
    }

    /// Sends one message of `len` bytes read from `src` in chunks, without
    /// holding it whole (a file, a pipe), within
    /// [`Timeouts::message`](crate::Timeouts::message).
    ///
    /// `Rejected` when the peer refused the length (nothing was read from
    /// `src`; the connection stays usable). If `src` fails or ends before
    /// `len` bytes ([`Error::Handler`] with the `std::io::Error`; an early end
    /// is `UnexpectedEof`), the message cannot be completed and the
    /// connection is broken. Plugins transform whole messages, so this fails with
    /// [`Error::Plugin`] when any is registered.
    pub fn transmit_from(&mut self, len: u32, src: &mut dyn std::io::Read) -> Result<(), Error> {
        self.check_no_plugins("transmit")?;
        self.before_send()?;
        self.arm_message_deadline();
        let result = self.transmit_from_raw(len, src);
        self.scratch = Vec::new();
        self.io().set_write_deadline(None);
        let result = match result {
            Err(RawError::Core(e)) => self.answered(Err(e)).map_err(RawError::Core),
            other => other,
        };
        match result {
            Ok(()) => {
                self.message_moved(false);
                Ok(())
            }
            Err(RawError::Core(e)) => Err(self.fail(e)),
            Err(RawError::Sink(e)) => {
                self.break_off();
                Err(e)
            }
        }
    }

    fn transmit_from_raw(&mut self, len: u32, src: &mut dyn std::io::Read) -> Result<(), RawError> {
        let Self { inner, scratch, .. } = self;
        let mut msg = inner.begin_transmit(len)?;
        scratch.resize(RECEIVE_CHUNK, 0);
        while msg.remaining() > 0 {
            let want = scratch.len().min(msg.remaining() as usize);
            let n = match src.read(&mut scratch[..want]) {
                Ok(0) => {
                    return Err(RawError::Sink(Error::handler(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "source ended before the announced length",
                    ))))
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RawError::Sink(Error::handler(e))),
            };
            msg.write_all(&scratch[..n])?;
        }
        msg.finish()?;
        Ok(())
    }

    // ---- the loop's side: a message whose first bytes are known to be here ----

    /// The length of the next message if its first bytes come within
    /// `wait` (zero: are here already): `None` when nothing came.
    pub(crate) fn try_next_length(&mut self, wait: Duration) -> Result<Option<u32>, Error> {
        self.check_usable()?;
        let io = self.io();
        io.set_read_deadline(Instant::now() + wait, Deadline::Receive);
        io.set_write_deadline(None);
        let result = self.inner.next_length();
        // What follows (the rest of the length, the payload) has the message
        // deadline.
        self.arm_message_deadline();
        match result {
            Ok(len) => Ok(Some(len)),
            Err(tinyproto::Error::Io(_)) if self.io().take_expired() == Some(Deadline::Receive) => {
                if !self.inner.is_in_progress() {
                    return Ok(None);
                }
                // Part of the length is here: the rest of it.
                self.inner.next_length().map(Some).map_err(|e| self.fail(e))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Takes the announced message whole into `buf` (reused: it grows only
    /// as bytes arrive), through the plugins; returns the message.
    pub(crate) fn take_whole<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<&'b [u8], Error> {
        let limit = self.cfg.max_message_len;
        buf.clear();
        match self.receive_raw(limit, buf) {
            Ok(_) => {}
            Err(RawError::Core(e)) => return Err(self.fail(e)),
            Err(RawError::Sink(e)) => return Err(e),
        }
        self.message_moved(true);
        if !self.cfg.plugins.is_empty() {
            let raw = std::mem::take(buf);
            *buf = self.cfg.plugins.receive(raw).map_err(Error::Plugin)?;
        }
        Ok(buf)
    }

    /// Takes the announced message of `len` bytes in chunks to `on_chunk`
    /// (its chunk buffer leased from the memory budget); its length.
    pub(crate) fn take_chunks(
        &mut self,
        len: u32,
        on_chunk: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<u32, Error> {
        let _lease = self.lease_for(len, chunk_buffer_len(len))?;
        let result = self.receive_chunks_raw(tinyproto::MAX_MESSAGE_LEN, on_chunk);
        self.scratch = Vec::new();
        match result {
            Ok(len) => {
                self.message_moved(true);
                Ok(len)
            }
            Err(RawError::Core(e)) => Err(self.fail(e)),
            Err(RawError::Sink(e)) => {
                self.break_off();
                Err(e)
            }
        }
    }

    /// Answers 0x00 to the announced message; its length.
    pub(crate) fn reject_announced(&mut self) -> Result<u32, Error> {
        self.inner.reject().map_err(|e| self.fail(e))
    }

    /// Sets the read and write deadlines of a message starting now.
    fn arm_message_deadline(&mut self) {
        let deadline = Instant::now() + self.cfg.timeouts.message;
        let io = self.io();
        io.set_read_deadline(deadline, Deadline::Message);
        io.set_write_deadline(Some((deadline, Deadline::Message)));
    }

    /// A message moved, the peer's (`received`) or ours.
    fn message_moved(&mut self, received: bool) {
        self.last_activity = Instant::now();
        self.received_last = received;
    }

    fn check_no_plugins(&self, what: &str) -> Result<(), Error> {
        if self.cfg.plugins.is_empty() {
            Ok(())
        } else {
            Err(Error::Plugin(
                format!("plugins transform whole messages: no chunked {what} with plugins").into(),
            ))
        }
    }

    /// Waits up to `wait` for a message to begin, then runs `step` (a
    /// resumable receive) to its end under the message deadline. Outside a
    /// batch the core writes our answer to its length out before this
    /// returns, so that a peer is never left waiting for it.
    fn wait_for_message<T>(
        &mut self,
        wait: Duration,
        mut step: impl FnMut(&mut Self) -> Result<T, RawError>,
    ) -> Result<Option<T>, Error> {
        self.greet()?;
        let now = Instant::now();
        let message = self.cfg.timeouts.message;
        let in_progress = self.inner.is_in_progress();
        let io = self.io();
        if !in_progress {
            io.mark_idle();
            // A deadline already passed still gets one look at the socket.
            io.set_read_deadline(now + wait, Deadline::Receive);
            io.set_write_deadline(None);
        } else {
            // Resuming a message (only after a `Receive` wait ran out on it).
            let start = io.first_byte().unwrap_or(now);
            io.set_read_deadline(start + message, Deadline::Message);
            io.set_write_deadline(Some((start + message, Deadline::Message)));
        }
        loop {
            match step(self) {
                Ok(value) => {
                    self.message_moved(true);
                    return Ok(Some(value));
                }
                Err(RawError::Core(tinyproto::Error::Io(e))) => {
                    let in_progress = self.inner.is_in_progress();
                    let io = self.io();
                    match io.take_expired() {
                        Some(Deadline::Receive) if !in_progress => return Ok(None),
                        Some(Deadline::Receive) => {
                            // The message began: it gets the message deadline
                            // from its first byte on.
                            let start = io.first_byte().unwrap_or(now);
                            io.set_read_deadline(start + message, Deadline::Message);
                            io.set_write_deadline(Some((start + message, Deadline::Message)));
                        }
                        Some(kind) => {
                            self.break_off();
                            return Err(Error::Timeout(kind));
                        }
                        None => {
                            self.break_off();
                            return Err(Error::Io(e));
                        }
                    }
                }
                Err(RawError::Core(e)) => return Err(self.fail(e)),
                Err(RawError::Sink(e)) => {
                    // The message is half read: the connection is out of step.
                    if self.inner.is_in_progress() {
                        self.break_off();
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Receives the payload into `buf`, growing it in steps no larger than
    /// what arrived before (a resume keeps what `buf` holds). Lengths over `limit` are
    /// answered 0x00. Resumable after an `Io` error.
    fn receive_raw(&mut self, limit: u32, buf: &mut Vec<u8>) -> Result<u32, RawError> {
        let mut msg = self.inner.begin_receive(limit)?;
        let len = msg.len();
        loop {
            let remaining = msg.remaining() as usize;
            if remaining == 0 {
                return Ok(len);
            }
            let old = buf.len();
            let step = old.clamp(FIRST_STEP, RECEIVE_CHUNK).min(remaining);
            buf.resize(old + step, 0);
            match msg.read(&mut buf[old..]) {
                Ok(n) => buf.truncate(old + n),
                Err(e) => {
                    buf.truncate(old);
                    return Err(e.into());
                }
            }
        }
    }

    /// Receives the payload through a fixed buffer, handing each chunk to
    /// `on_chunk`. Resumable after an `Io` error.
    fn receive_chunks_raw(
        &mut self,
        limit: u32,
        on_chunk: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<u32, RawError> {
        let Self { inner, scratch, .. } = self;
        let mut msg = inner.begin_receive(limit)?;
        let len = msg.len();
        scratch.resize(RECEIVE_CHUNK, 0);
        while msg.remaining() > 0 {
            let n = msg.read(scratch)?;
            on_chunk(&scratch[..n]).map_err(RawError::Sink)?;
        }
        Ok(len)
    }

    fn check_usable(&self) -> Result<(), Error> {
        if self.failed {
            Err(Error::Protocol(tinyproto::Error::Broken))
        } else {
            Ok(())
        }
    }

    /// The connection carries nothing more.
    pub(crate) fn break_off(&mut self) {
        self.failed = true;
        self.partial = Vec::new();
        self.lease = None;
    }

    /// Maps a core error (a deadline shows as `Io(TimedOut)`), breaking the
    /// connection unless it is still in step.
    fn fail(&mut self, e: ProtocolError) -> Error {
        let expired = self.io().take_expired();
        let e = match (e, expired) {
            (tinyproto::Error::Io(_), Some(kind)) => Error::Timeout(kind),
            (e, _) => Error::from(e),
        };
        if !e.is_recoverable() {
            self.break_off();
        }
        if let Error::Protocol(tinyproto::Error::Conflict) = e {
            // Both sides are out of step: the peer learns it from the close
            // now, not from a deadline.
            log::info!("{}: {e}: closing", self.id);
            self.shutdown();
        }
        e
    }

    /// Closes the connection (both directions), after writing out what
    /// waits in its buffer.
    pub fn close(mut self) {
        let _ = self.flush();
        self.shutdown();
    }

    pub(crate) fn shutdown(&self) {
        let _ = self.tcp_stream().shutdown(Shutdown::Both);
    }
}

/// The chunk buffer a chunked receive of `len` bytes leases.
fn chunk_buffer_len(len: u32) -> u64 {
    u64::from(len).min(RECEIVE_CHUNK as u64)
}

/// Releases what a message buffer holds beyond [`KEPT_BUFFER`] once its
/// message is done.
///
/// Shrunk, not dropped: with glibc, freeing a large buffer raises the size
/// from which allocations get their own mapping (its dynamic mmap
/// threshold), and from then on large buffers come from the heap, whose
/// freed middle stays resident. Shrinking a mapped buffer gives its pages
/// back to the system at once, and the threshold stays where it was.
pub(crate) fn release(buf: &mut Vec<u8>) {
    buf.clear();
    if buf.capacity() > KEPT_BUFFER {
        buf.shrink_to(KEPT_BUFFER);
    }
}
