//! What a user of the event threads writes: the [`EventHandler`] hooks,
//! closures as handlers ([`on_message`]), and the [`EventConn`] the hooks
//! see, with its queue of messages to send.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::budget::Lease;
use crate::config::SharedConfig;
use crate::conn::{release, Owner};
use crate::connections::{Connections, StopHandle};
use crate::duplex::Direction;
use crate::error::Error;
use crate::handler::Take;
use crate::id::ConnId;
use crate::sleep::Mailbox;

/// The hooks of a connection served on an event thread
/// ([`Server::set_event_handler`](crate::Server::set_event_handler)): those
/// of [`Handler`](crate::Handler), except that none may wait. Replies are
/// queued with [`EventConn::send`] and go out when the hook returned; each
/// one's outcome comes back in [`transmission_sent`](Self::transmission_sent).
///
/// An error a hook returns ends the connection with it unless it is
/// recoverable ([`Error::is_recoverable`]): then it is logged and the
/// connection goes on. A panicking hook ends its connection with
/// [`Error::Panicked`]. A hook that blocks (a lock held for long, a file
/// read, a sleep) holds up every connection of its event thread: hand such
/// work to a thread of your own and [`Connections::send_to`] the result.
pub trait EventHandler: Send + 'static {
    /// Runs once, after the greeting, before the first message.
    fn pre_loop(&mut self, conn: &mut EventConn) -> Result<(), Error> {
        let _ = conn;
        Ok(())
    }

    /// Runs after each message received, and every
    /// [`loop_pass_interval`](crate::Server::set_loop_pass_interval) if one
    /// is set and nothing else happened.
    fn loop_pass(&mut self, conn: &mut EventConn) -> Result<(), Error> {
        let _ = conn;
        Ok(())
    }

    /// Decides how to take the next message from its announced `len`,
    /// before any of its payload moves (see [`Take`]). By default: whole up
    /// to [`max_message_len`](EventConn::max_message_len), rejected beyond.
    fn message_announced(&mut self, conn: &EventConn, len: u32) -> Take {
        if len <= conn.max_message_len() {
            Take::Whole
        } else {
            Take::Reject
        }
    }

    /// Runs for each message taken [`Take::Whole`] (after the plugins).
    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        let _ = (conn, msg);
        Ok(())
    }

    /// Receives each chunk of a message taken [`Take::Chunks`], in order, as
    /// its bytes arrive (at most 64 KiB each). If the message breaks off,
    /// `post_loop` gets the error: discard what came.
    fn transmission_chunk(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let _ = chunk;
        Ok(())
    }

    /// Runs when the whole of a message taken [`Take::Chunks`] (`len` bytes)
    /// has arrived.
    fn transmission_complete(&mut self, conn: &mut EventConn, len: u32) -> Result<(), Error> {
        let _ = (conn, len);
        Ok(())
    }

    /// Runs once for each message this connection sent, whoever queued it
    /// ([`EventConn::send`], [`Connections::send_to`], a broadcast), with
    /// the message as queued (before the plugins) and its outcome: `Ok`
    /// once the peer accepted it and it was written; a rejection
    /// (`Error::Protocol(tinyproto::Error::Rejected { .. })`) or a plugin's
    /// refusal, after which the connection goes on. A failure that ends the
    /// connection goes to `post_loop` instead, and so do the messages still
    /// queued then: they are dropped, and `post_loop` says why.
    fn transmission_sent(&mut self, conn: &mut EventConn, msg: &[u8], result: &Result<(), Error>) {
        let _ = (conn, msg, result);
    }

    /// Runs once when the connection ends, however it ends; `result` is
    /// `Ok(())` for a normal end (the peer closed between messages, or a
    /// stop).
    fn post_loop(&mut self, conn: &mut EventConn, result: &Result<(), Error>) {
        let _ = (conn, result);
    }
}

/// Does nothing: messages are received and dropped.
impl EventHandler for () {}

/// A handler made of one closure, called for each whole message on an
/// event thread: the event threads' [`on_message`](crate::on_message).
///
/// ```no_run
/// use tinyproto_std::{events, Server};
///
/// let mut server = Server::new();
/// server.add_addr("127.0.0.1:7000")?;
/// server.set_event_handler(|| events::on_message(|conn, msg| conn.send(msg))); // echo
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn on_message<F>(f: F) -> OnEventMessage<F>
where
    F: FnMut(&mut EventConn, &[u8]) -> Result<(), Error> + Send + 'static,
{
    OnEventMessage(f)
}

/// The handler [`on_message`] makes of a closure.
#[derive(Debug, Clone)]
pub struct OnEventMessage<F>(F);

impl<F> EventHandler for OnEventMessage<F>
where
    F: FnMut(&mut EventConn, &[u8]) -> Result<(), Error> + Send + 'static,
{
    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        (self.0)(conn, msg)
    }
}

/// A connection as its [`EventHandler`] sees it: who it is, and a queue of
/// messages to send that never waits.
#[derive(Debug)]
pub struct EventConn {
    pub(super) id: ConnId,
    pub(super) peer: SocketAddr,
    pub(super) local: SocketAddr,
    pub(super) cfg: SharedConfig,
    pub(super) owner: Owner,
    /// Messages to send, in order, as queued (the plugins run as each goes).
    pub(super) outbox: VecDeque<Outgoing>,
    pub(super) stop: bool,
    /// Which half of a duplex link this is (on a duplex server).
    pub(super) direction: Option<Direction>,
    /// Who the TLS peer is, once its handshake is done.
    #[cfg(feature = "tls")]
    pub(super) identity: Option<crate::tls::PeerIdentity>,
    pub(super) mailbox: Arc<Mailbox>,
    pub(super) last_activity: Instant,
}

impl EventConn {
    /// The connection's id in its server's registry.
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

    /// The longest message taken by default.
    pub fn max_message_len(&self) -> u32 {
        self.cfg.max_message_len
    }

    /// When the last message moved, either way (or the connection began).
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// Queues `msg` to send to the peer, after what is queued already, and
    /// returns at once; it goes out when the hook returned and nothing of
    /// the peer's is arriving. Its outcome comes back in
    /// [`EventHandler::transmission_sent`]. [`Error::QueueFull`] when
    /// [`queue_len`](crate::Server::set_queue_len) messages wait already.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        if self.direction == Some(Direction::Up) {
            return Err(Error::UpHalf);
        }
        if self.outbox.len() >= self.cfg.queue_len.max(1) {
            return Err(Error::QueueFull(self.id));
        }
        self.outbox.push_back(Outgoing::Own(msg.to_vec(), None));
        Ok(())
    }

    /// Which half of a duplex link this is, on a duplex server
    /// ([`Server::set_duplex`](crate::Server::set_duplex)); `None` otherwise.
    /// Nothing is sent on an up half: [`send`](Self::send) says
    /// [`Error::UpHalf`]; reply through [`Connections::send_to`] with this
    /// connection's id, which goes to its down half.
    pub fn direction(&self) -> Option<Direction> {
        self.direction
    }

    /// Who the peer is, from the certificate it presented over TLS
    /// (feature `tls`; `None` without TLS or a client certificate). There in
    /// every hook: a `pre_loop` that returns an error refuses the
    /// connection.
    #[cfg(feature = "tls")]
    pub fn peer_identity(&self) -> Option<crate::tls::PeerIdentity> {
        self.identity.clone()
    }

    /// Messages queued and not sent yet.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// The registry of the server's active connections.
    pub fn active_connections(&self) -> Connections {
        self.owner.connections.clone()
    }

    /// A handle that stops the whole server.
    pub fn loop_stop_handle(&self) -> StopHandle {
        self.owner.stop.clone()
    }

    /// Ends this connection once what is queued went out (its `post_loop`
    /// runs with `Ok`).
    pub fn stop(&mut self) {
        self.stop = true;
    }

    /// True once [`stop`](Self::stop) was called or the server is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stop || self.mailbox.is_draining()
    }
}

/// A message waiting to go out: a copy the handler queued (which may hold
/// the room in the memory budget of the message it answers), or one that
/// other connections queued (shared between them).
#[derive(Debug)]
pub(super) enum Outgoing {
    Own(Vec<u8>, Option<Lease>),
    Queued(Arc<[u8]>),
    /// The loop's own answer to a down half's duplex hello.
    Welcome,
}

impl Outgoing {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Outgoing::Own(msg, _) => msg,
            Outgoing::Queued(msg) => msg,
            Outgoing::Welcome => tinyproto::duplex::WELCOME,
        }
    }

    /// True when it holds room in the memory budget.
    pub(super) fn holds_room(&self) -> bool {
        matches!(self, Outgoing::Own(_, Some(_)))
    }

    /// Frees it (its room in the budget too), giving a large buffer's pages
    /// back to the system (see `release`).
    pub(super) fn release(self) {
        if let Outgoing::Own(mut msg, _lease) = self {
            release(&mut msg);
        }
    }
}
