//! One connection: [`Conn`], whole messages in and out with deadlines,
//! plugins and the memory budget, over the core's blocking driver and the
//! [`Transport`].
//!
//! Writes wait in the transport's buffer, flushed by the core's
//! [`FlushPolicy`]: each message is written out before its call returns
//! ([`EachMessage`](FlushPolicy::EachMessage)), except inside a connection
//! loop's hooks and [`Conn::transmit_all`], which switch to
//! [`BeforeRead`](FlushPolicy::BeforeRead) so the end of one message and the
//! length of the next leave together; the loop flushes whenever a hook
//! returns. The loop's own side of a connection (a length read first, then
//! the handler's decision) is in `conn_loop`.
//!
//! A connection that failed is broken in the core ([`Connection::break_off`]):
//! that is the one record of it.

use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tinyproto::blocking::Connection;
use tinyproto::FlushPolicy;

use crate::budget::{Lease, NoRoom};
use crate::config::SharedConfig;
use crate::connections::{Connections, Shared, StopHandle};
use crate::duplex::Direction;
use crate::error::{Deadline, Error, ProtocolError};
use crate::id::ConnId;
use crate::sleep::{Mailbox, Readiness};
use crate::transport::{Stream, Tcp, Transport};

/// Payload bytes read per step of a receive, at most: the size of a chunk.
pub(crate) const RECEIVE_CHUNK: usize = 64 * 1024;

/// The first step of a whole message's buffer; each later one is at most
/// as large as what arrived before it, so the buffer never holds more than
/// twice the bytes that came (and never more than the message).
pub(crate) const FIRST_STEP: usize = 4 * 1024;

/// A message buffer larger than this is released once its message is done.
/// An idle connection keeps at most this, its 16 KiB write buffer and its
/// read-ahead: under 64 KiB, whatever it received before.
const KEPT_BUFFER: usize = 16 * 1024;

/// At most this many of the peer's messages are taken (or refused) before
/// one of ours goes out.
const MAX_TAKEN_BEFORE_SEND: usize = 64;

/// The transport of every connection: TCP today, any [`Stream`] over a
/// socket (TLS) with no change above.
pub(crate) type ConnTransport = Transport<Box<dyn Stream>>;

/// A failure inside a chunked receive or transmit: the core's, or the
/// caller's (a chunk consumer or source).
pub(crate) enum RawError {
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

/// What a connection reaches of the server or client it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub(crate) connections: Connections,
    pub(crate) stop: StopHandle,
}

/// A connected, tinyproto-speaking TCP connection.
///
/// Every call is bounded by the [`Timeouts`](crate::Timeouts) it was
/// created with. Messages are whole: nothing of a partial message is ever
/// returned, and the buffer of an incoming message grows only as its bytes
/// actually arrive (never to a length the peer merely announced).
pub struct Conn {
    pub(crate) id: ConnId,
    pub(crate) inner: Connection<ConnTransport>,
    /// The socket, shared with the registry.
    socket: Arc<TcpStream>,
    peer: SocketAddr,
    local: SocketAddr,
    pub(crate) cfg: SharedConfig,
    /// Buffer of chunked receives and transmits (allocated for each one).
    scratch: Vec<u8>,
    /// Messages the peer had begun to send when this side was about to
    /// send: taken first (so that neither side reads the other's length as
    /// an answer), they wait here for the next receive or the loop's
    /// handler. At most `max_message_len` bytes in all.
    pub(crate) held: VecDeque<Vec<u8>>,
    started: Instant,
    last_activity: Instant,
    /// Which half of a duplex link this is (set by a duplex server's loop).
    pub(crate) direction: Option<Direction>,
    stop: bool,
    /// The registry and stop handle of the server or client this
    /// connection belongs to.
    owner: Owner,
    pub(crate) attached: Option<Attached>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("protocol", self.inner.machine())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Wraps a connected stream (in TLS if configured). A socket that was
    /// reset already fails at the greeting, with a typed error its handler
    /// sees; only a TLS configuration rustls refuses fails here.
    pub(crate) fn new(
        id: ConnId,
        stream: TcpStream,
        peer: SocketAddr,
        cfg: SharedConfig,
        owner: Owner,
    ) -> Result<Self, Error> {
        if let Err(e) = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_nodelay(cfg.nodelay))
        {
            log::debug!("{id}: socket options not set: {e}");
        }
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let socket = Arc::new(stream);
        let tcp = Tcp(socket.clone());
        #[cfg(feature = "tls")]
        let stream: Box<dyn Stream> = match &cfg.tls {
            Some(tls) => tls.wrap(tcp).map_err(Error::Tls)?,
            None => Box::new(tcp),
        };
        #[cfg(not(feature = "tls"))]
        let stream: Box<dyn Stream> = Box::new(tcp);
        let mut inner = Connection::new(Transport::new(stream, cfg.timeouts.write));
        inner.set_flush_policy(FlushPolicy::EachMessage);
        inner.set_max_message_len(cfg.max_message_len);
        let now = Instant::now();
        Ok(Self {
            id,
            inner,
            socket,
            peer,
            local,
            cfg,
            scratch: Vec::new(),
            held: VecDeque::new(),
            started: now,
            last_activity: now,
            direction: None,
            stop: false,
            owner,
            attached: None,
        })
    }

    pub(crate) fn transport(&mut self) -> &mut ConnTransport {
        self.inner.get_mut()
    }

    /// The socket, shared with the registry.
    pub(crate) fn shared_socket(&self) -> Arc<TcpStream> {
        self.socket.clone()
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
        &self.socket
    }

    /// True when the connection runs in TLS.
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.cfg.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Who the peer is, from the certificate it presented over TLS (and
    /// that the TLS configuration verified): `None` without TLS, before the
    /// handshake (every call greets first; hooks run after it), or when the
    /// peer presented none (a server that does not ask for one).
    #[cfg(feature = "tls")]
    pub fn peer_identity(&self) -> Option<crate::tls::PeerIdentity> {
        let certificate = self.inner.get_ref().stream().peer_certificate()?;
        crate::tls::PeerIdentity::from_certificate(certificate)
    }

    /// True after a deadline ran out mid-message or the protocol broke:
    /// the connection carries nothing more.
    pub fn is_broken(&self) -> bool {
        self.inner.is_broken()
    }

    /// On a duplex server, which half of its [`Duplex`](crate::Duplex) link
    /// this connection is; `None` elsewhere.
    pub fn direction(&self) -> Option<Direction> {
        self.direction
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

    // ---- the greeting ----

    /// Exchanges the greeting, within [`Timeouts::greeting`](crate::Timeouts::greeting)
    /// of the connection's start. Done by every other call first.
    pub fn greet(&mut self) -> Result<(), Error> {
        self.check_usable()?;
        if self.inner.is_greeted() {
            return Ok(());
        }
        self.begin_greeting();
        let result = self.inner.greet();
        self.transport().end_exchange();
        result.map_err(|e| self.fail(e))
    }

    /// Writes this side's greeting byte at once, without waiting for the
    /// peer's: a server does it as it accepts, so that a client's greeting
    /// completes without waiting for the connection's thread to start.
    pub(crate) fn send_greeting(&mut self) {
        self.begin_greeting();
        let result = self.inner.send_greeting();
        self.transport().end_exchange();
        if let Err(e) = result {
            let e = self.fail(e);
            log::debug!("{}: greeting failed at once: {e}", self.id);
        }
    }

    fn begin_greeting(&mut self) {
        let until = self.started + self.cfg.timeouts.greeting;
        self.transport().begin_exchange(until, Deadline::Greeting);
    }

    // ---- sending ----

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
        self.begin_message();
        let result = self.inner.transmit(&wire);
        self.transport().end_exchange();
        match self.answered(result) {
            Ok(()) => {
                self.message_moved();
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
        // Bounded: a peer that keeps sending refused messages cannot hold
        // ours back for ever (what crosses it then is a conflict).
        for _ in 0..MAX_TAKEN_BEFORE_SEND {
            if self.inner.is_in_progress() {
                break;
            }
            match self.transport().look() {
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
                Err(e) if e.is_recoverable() && !self.is_broken() => {
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
        let transport = self.transport();
        let behind = match transport.ahead_len() {
            n if n >= tinyproto::LENGTH_FIELD_LEN - 1 => n,
            _ => transport.look().unwrap_or(0),
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
        let flushed = if self.is_broken() {
            Ok(())
        } else {
            self.flush()
        };
        result.and(flushed).map(|()| sent).map_err(|e| (sent, e))
    }

    /// Writes out whatever waits in the connection's buffer.
    pub fn flush(&mut self) -> Result<(), Error> {
        if !self.inner.machine().needs_flush() || self.is_broken() {
            return Ok(());
        }
        self.begin_message();
        let result = self.inner.flush();
        self.transport().end_exchange();
        result.map_err(|e| self.fail(e))
    }

    /// Sends one message of `len` bytes read from `src` in chunks, without
    /// holding it whole (a file, a pipe), within
    /// [`Timeouts::message`](crate::Timeouts::message).
    ///
    /// `Rejected` when the peer refused the length (nothing was read from
    /// `src`; the connection stays usable). If `src` fails or ends before
    /// `len` bytes ([`Error::Handler`] with the `std::io::Error`; an early end
    /// is `UnexpectedEof`), the message cannot be completed and the
    /// connection is broken. Plugins transform whole messages, so this fails
    /// with [`Error::Plugin`] when any is registered.
    pub fn transmit_from(&mut self, len: u32, src: &mut dyn std::io::Read) -> Result<(), Error> {
        self.check_no_plugins("transmit")?;
        self.before_send()?;
        self.begin_message();
        let result = self.transmit_from_raw(len, src);
        self.scratch = Vec::new();
        self.transport().end_exchange();
        let result = match result {
            Err(RawError::Core(e)) => self.answered(Err(e)).map_err(RawError::Core),
            other => other,
        };
        match result {
            Ok(()) => {
                self.message_moved();
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

    // ---- receiving ----

    /// Receives one whole message (through the plugins): waits up to
    /// [`Timeouts::receive`](crate::Timeouts::receive) for it to begin, then
    /// up to [`Timeouts::message`](crate::Timeouts::message) for all of it.
    ///
    /// A length over [`max_message_len`](Self::max_message_len) is answered
    /// 0x00 and reported as `Error::Protocol(tinyproto::Error::TooLarge { .. })`,
    /// one the memory budget has no room for as [`Error::MemoryBudget`]; the
    /// connection stays usable. `Error::Protocol(tinyproto::Error::Closed)`
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

    /// Receives a message from the socket (not from `held`): a length over
    /// `limit` is answered 0x00.
    fn receive_now(&mut self, wait: Duration, limit: u32) -> Result<Option<Vec<u8>>, Error> {
        let Some(len) = self.announced(wait)? else {
            return Ok(None);
        };
        let mut msg = Vec::new();
        // The caller owns the message now: it is not in flight any more.
        let _lease = self.receive_whole(len, limit, &mut msg)?;
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
        self.receive_chunks(len, limit, &mut on_chunk).map(Some)
    }

    /// Waits up to `wait` for a message to begin (zero: looks once) and
    /// reads its length, not answered yet; `None` when none began. The
    /// first byte starts the message deadline.
    pub(crate) fn announced(&mut self, wait: Duration) -> Result<Option<u32>, Error> {
        self.greet()?;
        if !self.inner.is_in_progress() {
            let message = self.cfg.timeouts.message;
            let until = Instant::now() + wait;
            self.transport()
                .await_exchange(until, Deadline::Receive, message);
        } else if self.transport().deadline().is_none() {
            // A message half read: it has the message deadline, never a
            // receive wait.
            self.begin_message();
        }
        match self.inner.next_length() {
            Ok(len) => Ok(Some(len)),
            Err(tinyproto::Error::Io(_))
                if !self.inner.is_in_progress()
                    && self.transport().take_expired() == Some(Deadline::Receive) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Takes the message whose length `len` was just read, whole into `buf`
    /// (through the plugins), growing it in steps no larger than what
    /// arrived. A length over `limit` is answered 0x00 (`TooLarge`), one the
    /// memory budget has no room for too (`MemoryBudget`). The lease keeps
    /// the message's room in the budget: drop it once `buf` is released.
    pub(crate) fn receive_whole(
        &mut self,
        len: u32,
        limit: u32,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Lease>, Error> {
        // Over the limit, the receive answers 0x00: nothing to hold.
        let lease = if len <= limit {
            Some(self.lease_for(len, len.into())?)
        } else {
            None
        };
        buf.clear();
        if let Err(e) = self.receive_raw(limit, buf) {
            return Err(self.fail(e));
        }
        self.transport().end_exchange();
        self.message_moved();
        log::trace!("{} received {} bytes", self.id, buf.len());
        if !self.cfg.plugins.is_empty() {
            let raw = std::mem::take(buf);
            *buf = self.cfg.plugins.receive(raw).map_err(Error::Plugin)?;
        }
        Ok(lease)
    }

    fn receive_raw(&mut self, limit: u32, buf: &mut Vec<u8>) -> Result<u32, ProtocolError> {
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
                    return Err(e);
                }
            }
        }
    }

    /// Takes the message whose length `len` was just read in chunks to
    /// `on_chunk`, through one buffer leased from the memory budget; its
    /// length. A length over `limit` is answered 0x00 (`TooLarge`).
    pub(crate) fn receive_chunks(
        &mut self,
        len: u32,
        limit: u32,
        on_chunk: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<u32, Error> {
        // Over the limit, the receive answers 0x00: no buffer.
        let _lease = if len <= limit {
            Some(self.lease_for(len, chunk_buffer_len(len))?)
        } else {
            None
        };
        let result = self.receive_chunks_raw(limit, on_chunk);
        self.scratch = Vec::new();
        self.transport().end_exchange();
        match result {
            Ok(len) => {
                self.message_moved();
                Ok(len)
            }
            Err(RawError::Core(e)) => Err(self.fail(e)),
            Err(RawError::Sink(e)) => {
                // Half read: the connection is out of step.
                if self.inner.is_in_progress() {
                    self.break_off();
                }
                Err(e)
            }
        }
    }

    fn receive_chunks_raw(
        &mut self,
        limit: u32,
        on_chunk: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<u32, RawError> {
        let Self { inner, scratch, .. } = self;
        let mut msg = inner.begin_receive(limit)?;
        let len = msg.len();
        scratch.resize(chunk_buffer_len(len) as usize, 0);
        while msg.remaining() > 0 {
            let n = msg.read(scratch)?;
            on_chunk(&scratch[..n]).map_err(RawError::Sink)?;
        }
        Ok(len)
    }

    /// Takes `bytes` from the memory budget for the message of `len` bytes
    /// whose length was just read, waiting for room until the message
    /// deadline; without room then (or ever), answers 0x00.
    fn lease_for(&mut self, len: u32, bytes: u64) -> Result<Lease, Error> {
        let deadline = match self.transport().deadline() {
            Some((at, _)) => at,
            None => Instant::now() + self.cfg.timeouts.message,
        };
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

    /// Answers 0x00 to the announced message; its length.
    pub(crate) fn reject_announced(&mut self) -> Result<u32, Error> {
        let result = self.inner.reject();
        self.transport().end_exchange();
        result.map_err(|e| self.fail(e))
    }

    // ---- bookkeeping ----

    /// The read and write deadline of a message starting now.
    fn begin_message(&mut self) {
        let until = Instant::now() + self.cfg.timeouts.message;
        self.transport().begin_exchange(until, Deadline::Message);
    }

    /// A message moved, either way.
    fn message_moved(&mut self) {
        self.last_activity = Instant::now();
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

    fn check_usable(&self) -> Result<(), Error> {
        if self.is_broken() {
            Err(Error::Protocol(tinyproto::Error::Broken))
        } else {
            Ok(())
        }
    }

    /// The connection carries nothing more.
    pub(crate) fn break_off(&mut self) {
        self.inner.break_off();
    }

    /// Maps a core error (a deadline shows as `Io(TimedOut)`), breaking the
    /// connection unless it is still in step.
    fn fail(&mut self, e: ProtocolError) -> Error {
        let expired = self.transport().take_expired();
        let e = match (e, expired) {
            (tinyproto::Error::Io(_), Some(kind)) => Error::Timeout(kind),
            (e, _) => Error::from(e),
        };
        if !e.is_recoverable() {
            self.break_off();
        }
        #[cfg(feature = "tls")]
        if let Error::Tls(_) = e {
            // The alert rustls queued tells the peer why, rather than a bare close.
            self.transport().close();
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
    /// waits in its buffer (and, over TLS, ending the session).
    pub fn close(mut self) {
        let _ = self.flush();
        self.finish();
    }

    /// Ends the stream's session (TLS's close_notify, within the write
    /// timeout) and shuts the socket.
    pub(crate) fn finish(&mut self) {
        if !self.is_broken() {
            self.transport().end_exchange();
            self.transport().close();
        }
        self.shutdown();
    }

    pub(crate) fn shutdown(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// The chunk buffer a chunked receive of `len` bytes uses (and leases).
pub(crate) fn chunk_buffer_len(len: u32) -> u64 {
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
