//! One connection: [`Conn`] (transmit and receive whole messages with
//! deadlines and plugins) and the [`Handler`] hooks its loop runs.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tinyproto::blocking::Connection;

use crate::config::SharedConfig;
use crate::error::{Deadline, Error, ProtocolError};
use crate::io::Io;
use crate::registry::{Connections, Shared, StopHandle};
use crate::ConnId;

/// Payload bytes read per step of a receive: a message buffer grows by at
/// most this much beyond the bytes that actually arrived.
const RECEIVE_CHUNK: usize = 64 * 1024;

/// The shortest wait of [`Conn::try_receive`].
const MIN_WAIT: Duration = Duration::from_millis(1);

/// The hooks of a connection loop, mirroring the reference's
/// `TinyProtoConnection` subclass methods. Every method has a default body.
///
/// Inside a hook the handler may use its connection directly:
/// [`Conn::transmit`], [`Conn::receive`] (wait for a reply without going
/// back to the loop), [`Conn::stop`], and through [`Conn::active_connections`]
/// send to other connections. Returning an error from a hook ends the
/// connection with that error; [`post_loop`](Handler::post_loop) still runs.
///
/// A panicking hook ends its connection with [`Error::Panicked`]; the
/// server and everyone else go on.
pub trait Handler: Send + 'static {
    /// Runs once, after the greeting, before the first loop pass.
    fn pre_loop(&mut self, conn: &mut Conn) -> Result<(), Error> {
        let _ = conn;
        Ok(())
    }

    /// Runs on every pass of the loop: after each message, and at least
    /// every [`Timeouts::poll`](crate::Timeouts::poll) while none arrives.
    fn loop_pass(&mut self, conn: &mut Conn) -> Result<(), Error> {
        let _ = conn;
        Ok(())
    }

    /// Runs for each whole message received (after the plugins).
    fn transmission_received(&mut self, conn: &mut Conn, msg: Vec<u8>) -> Result<(), Error> {
        let _ = (conn, msg);
        Ok(())
    }

    /// Return `Some(limit)` to have the loop take the next message in chunks
    /// (messages larger than memory) instead of whole: each piece goes to
    /// [`transmission_chunk`](Handler::transmission_chunk) as it arrives,
    /// then [`transmission_complete`](Handler::transmission_complete) runs
    /// instead of `transmission_received`. Lengths over `limit` are answered
    /// 0x00 and the connection goes on. Asked before every message; by
    /// default `None` (whole messages). Not with plugins (see
    /// [`Conn::receive_chunked`]).
    fn receive_in_chunks(&mut self) -> Option<u32> {
        None
    }

    /// Receives each chunk of a message taken in chunks, in order. If the
    /// message breaks off, `post_loop` gets the error and
    /// `transmission_complete` never runs: discard what came.
    fn transmission_chunk(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let _ = chunk;
        Ok(())
    }

    /// Runs when the whole of a message taken in chunks (`len` bytes) has
    /// arrived.
    fn transmission_complete(&mut self, conn: &mut Conn, len: u32) -> Result<(), Error> {
        let _ = (conn, len);
        Ok(())
    }

    /// Runs once when the connection ends, however it ends (the greeting
    /// failed, the peer closed, an error, a panic, a stop). `result` is
    /// `Ok(())` for a normal end: the peer closed between messages, or the
    /// loop was asked to stop.
    fn post_loop(&mut self, conn: &mut Conn, result: &Result<(), Error>) {
        let _ = (conn, result);
    }
}

/// Does nothing: messages are received and dropped.
impl Handler for () {}

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
    pub(crate) inbox: Receiver<Arc<[u8]>>,
    pub(crate) stop: StopHandle,
}

/// A connected, tinyproto-speaking TCP connection.
///
/// Every call is bounded by the [`Timeouts`](crate::Timeouts) it was
/// created with. Messages are whole: nothing of a partial message is ever
/// returned, and the buffer of an incoming message grows only as its bytes
/// actually arrive (never to a length the peer merely announced).
#[derive(Debug)]
pub struct Conn {
    id: ConnId,
    inner: Connection<Io>,
    peer: SocketAddr,
    local: SocketAddr,
    cfg: SharedConfig,
    /// Payload of the message being received.
    partial: Vec<u8>,
    /// Buffer of chunked receives and transmits (allocated on first use).
    scratch: Vec<u8>,
    started: Instant,
    last_activity: Instant,
    /// A deadline ran out mid-message or the protocol broke: carry nothing more.
    failed: bool,
    stop: bool,
    attached: Option<Attached>,
}

impl Conn {
    /// Wraps a connected stream. Never fails: a socket that was reset
    /// already fails at the greeting, with a typed error its handler sees.
    pub(crate) fn new(id: ConnId, stream: TcpStream, peer: SocketAddr, cfg: SharedConfig) -> Self {
        if let Err(e) = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_nodelay(cfg.nodelay))
        {
            log::debug!("{id}: socket options not set: {e}");
        }
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut inner = Connection::new(Io::new(stream, cfg.timeouts.write));
        inner.set_max_message_len(cfg.max_message_len);
        let now = Instant::now();
        Self {
            id,
            inner,
            peer,
            local,
            cfg,
            partial: Vec::new(),
            scratch: Vec::new(),
            started: now,
            last_activity: now,
            failed: false,
            stop: false,
            attached: None,
        }
    }

    pub(crate) fn attach(&mut self, attached: Attached) {
        self.attached = Some(attached);
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
        self.inner.get_ref().stream()
    }

    /// The largest message length this side accepts.
    pub fn max_message_len(&self) -> u32 {
        self.cfg.max_message_len
    }

    /// The active connections of the server or client running this
    /// connection's loop (`None` for a plain [`Client::connect`](crate::Client::connect)
    /// connection).
    pub fn active_connections(&self) -> Option<Connections> {
        self.attached
            .as_ref()
            .map(|a| Connections::new(a.shared.clone()))
    }

    /// Stops the loop of the server or client this connection belongs to
    /// (`None` for a plain client connection).
    pub fn loop_stop_handle(&self) -> Option<StopHandle> {
        self.attached.as_ref().map(|a| a.stop.clone())
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
        let io = self.inner.get_mut();
        io.set_read_deadline(deadline, Deadline::Greeting);
        io.set_write_deadline(Some((deadline, Deadline::Greeting)));
        let result = self.inner.greet();
        result.map_err(|e| self.fail(e))
    }

    /// Sends one whole message (through the plugins), within
    /// [`Timeouts::message`](crate::Timeouts::message).
    ///
    /// `Err(Error::Protocol(tinyproto::Error::Rejected { .. }))` when the
    /// peer refused its length; the connection stays usable.
    pub fn transmit(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.greet()?;
        let wire = self.cfg.plugins.transmit(msg).map_err(Error::Plugin)?;
        let deadline = Instant::now() + self.cfg.timeouts.message;
        let io = self.inner.get_mut();
        io.set_read_deadline(deadline, Deadline::Message);
        io.set_write_deadline(Some((deadline, Deadline::Message)));
        let result = self.inner.transmit(&wire);
        self.inner.get_mut().set_write_deadline(None);
        match result {
            Ok(()) => {
                self.last_activity = Instant::now();
                log::trace!("{} sent {} bytes", self.id, wire.len());
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
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
    pub fn try_receive(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, Error> {
        let Some(raw) = self.wait_for_message(wait, |conn| conn.receive_raw())? else {
            return Ok(None);
        };
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
    /// [`max_message_len`](Self::max_message_len) caps whole messages only.) If the message breaks off (an error, a deadline, or `on_chunk`
    /// failing), the chunks already handed over are all there will be:
    /// discard them. Plugins transform whole messages, so this fails with
    /// [`Error::Plugin`] when any is registered.
    pub fn receive_chunked(
        &mut self,
        limit: u32,
        on_chunk: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
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
        on_chunk: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<Option<u32>, Error> {
        if !self.cfg.plugins.is_empty() {
            return Err(Error::Plugin(
                "plugins transform whole messages: no chunked receive with plugins".into(),
            ));
        }
        self.wait_for_message(wait, |conn| conn.receive_chunks_raw(limit, on_chunk))
    }

    /// Sends one message of `len` bytes read from `src` in chunks, without
    /// holding it whole (a file, a pipe), within
    /// [`Timeouts::message`](crate::Timeouts::message).
    ///
    /// `Rejected` when the peer refused the length (nothing was read from
    /// `src`; the connection stays usable). If `src` fails or ends before
    /// `len` bytes, the message cannot be completed and the connection is
    /// broken. Plugins transform whole messages, so this fails with
    /// [`Error::Plugin`] when any is registered.
    pub fn transmit_from(&mut self, len: u32, src: &mut dyn std::io::Read) -> Result<(), Error> {
        if !self.cfg.plugins.is_empty() {
            return Err(Error::Plugin(
                "plugins transform whole messages: no chunked transmit with plugins".into(),
            ));
        }
        self.greet()?;
        let deadline = Instant::now() + self.cfg.timeouts.message;
        let io = self.inner.get_mut();
        io.set_read_deadline(deadline, Deadline::Message);
        io.set_write_deadline(Some((deadline, Deadline::Message)));
        let result = self.transmit_from_raw(len, src);
        self.inner.get_mut().set_write_deadline(None);
        match result {
            Ok(()) => {
                self.last_activity = Instant::now();
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
                    return Err(RawError::Sink(
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "source ended before the announced length",
                        )
                        .into(),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RawError::Sink(e.into())),
            };
            msg.write_all(&scratch[..n])?;
        }
        msg.finish()?;
        Ok(())
    }

    /// Waits up to `wait` for a message to begin, then runs `step` (a
    /// resumable receive) to its end under the message deadline.
    fn wait_for_message<T>(
        &mut self,
        wait: Duration,
        mut step: impl FnMut(&mut Self) -> Result<T, RawError>,
    ) -> Result<Option<T>, Error> {
        self.greet()?;
        let now = Instant::now();
        let message = self.cfg.timeouts.message;
        let in_progress = self.inner.is_in_progress();
        let io = self.inner.get_mut();
        if !in_progress {
            io.mark_idle();
            // At least one short read, even for a zero wait.
            io.set_read_deadline(now + wait.max(MIN_WAIT), Deadline::Receive);
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
                    self.last_activity = Instant::now();
                    return Ok(Some(value));
                }
                Err(RawError::Core(tinyproto::Error::Io(e))) => {
                    let in_progress = self.inner.is_in_progress();
                    let io = self.inner.get_mut();
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
                            return Err(Error::Protocol(tinyproto::Error::Io(e)));
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

    /// Receives the raw payload into `self.partial`, growing it only by
    /// bytes that arrived. Resumable after an `Io` error.
    fn receive_raw(&mut self) -> Result<Vec<u8>, RawError> {
        let Self {
            inner,
            partial,
            cfg,
            ..
        } = self;
        // Whole messages are held in memory: the configured cap applies.
        inner.set_max_message_len(cfg.max_message_len);
        let mut msg = inner.begin_receive(cfg.max_message_len)?;
        loop {
            let remaining = msg.remaining() as usize;
            if remaining == 0 {
                return Ok(std::mem::take(partial));
            }
            let old = partial.len();
            partial.resize(old + remaining.min(RECEIVE_CHUNK), 0);
            match msg.read(&mut partial[old..]) {
                Ok(n) => partial.truncate(old + n),
                Err(e) => {
                    partial.truncate(old);
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
        // Chunks are not held: only the caller's limit applies.
        inner.set_max_message_len(limit);
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
    fn break_off(&mut self) {
        self.failed = true;
        self.partial = Vec::new();
    }

    /// Maps a core error (a deadline shows as `Io(TimedOut)`), breaking the
    /// connection unless it is still in step.
    fn fail(&mut self, e: ProtocolError) -> Error {
        let expired = self.inner.get_mut().take_expired();
        let e = match (e, expired) {
            (tinyproto::Error::Io(_), Some(kind)) => Error::Timeout(kind),
            (e, _) => Error::Protocol(e),
        };
        if !e.is_recoverable() {
            self.break_off();
        }
        e
    }

    /// Sends the messages other connections queued for this one.
    fn send_queued(&mut self) -> Result<(), Error> {
        loop {
            let Some(attached) = &self.attached else {
                return Ok(());
            };
            let msg = match attached.inbox.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(()),
            };
            match self.transmit(&msg) {
                Err(e) if e.is_recoverable() => {
                    log::warn!("{}: queued message not delivered: {e}", self.id)
                }
                other => other?,
            }
        }
    }

    fn check_idle(&self) -> Result<(), Error> {
        match self.cfg.timeouts.idle {
            Some(idle) if self.last_activity.elapsed() >= idle => {
                Err(Error::Timeout(Deadline::Idle))
            }
            _ => Ok(()),
        }
    }

    /// Closes the connection (both directions).
    pub fn close(self) {
        let _ = self.tcp_stream().shutdown(Shutdown::Both);
    }

    pub(crate) fn shutdown(&self) {
        let _ = self.tcp_stream().shutdown(Shutdown::Both);
    }
}

/// The loop of one connection, hooks included; never panics.
pub(crate) fn run_connection(conn: &mut Conn, handler: &mut dyn Handler) -> Result<(), Error> {
    let result = catch_unwind(AssertUnwindSafe(|| connection_loop(conn, handler)))
        .unwrap_or_else(|payload| Err(Error::Panicked(panic_message(&*payload))));
    match &result {
        Ok(()) => log::debug!("{} ({}) ended", conn.id, conn.peer),
        Err(e) => log::info!("{} ({}) ended: {e}", conn.id, conn.peer),
    }
    if catch_unwind(AssertUnwindSafe(|| handler.post_loop(conn, &result))).is_err() {
        log::error!("{}: post_loop panicked", conn.id);
    }
    conn.shutdown();
    result
}

fn connection_loop(conn: &mut Conn, handler: &mut dyn Handler) -> Result<(), Error> {
    conn.greet()?;
    handler.pre_loop(conn)?;
    let poll = conn.cfg.timeouts.poll;
    while !conn.is_stopping() {
        conn.send_queued()?;
        let received = match handler.receive_in_chunks() {
            None => conn.try_receive(poll).map(|msg| msg.map(Incoming::Whole)),
            Some(limit) => conn
                .try_receive_chunked(poll, limit, &mut |chunk| handler.transmission_chunk(chunk))
                .map(|len| len.map(Incoming::Chunked)),
        };
        match received {
            Ok(Some(Incoming::Whole(msg))) => handler.transmission_received(conn, msg)?,
            Ok(Some(Incoming::Chunked(len))) => handler.transmission_complete(conn, len)?,
            Ok(None) => conn.check_idle()?,
            Err(e) if e.is_closed() => return Ok(()),
            Err(Error::Protocol(e @ tinyproto::Error::TooLarge { .. })) => {
                log::warn!("{}: refused a message: {e}", conn.id);
            }
            Err(e) => return Err(e),
        }
        if conn.is_stopping() {
            break;
        }
        handler.loop_pass(conn)?;
    }
    Ok(())
}

/// A message the loop received.
enum Incoming {
    Whole(Vec<u8>),
    Chunked(u32),
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
