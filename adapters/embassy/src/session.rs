//! [`Session`]: the tinyproto operations of one connection with the
//! deadlines of its [`Timeouts`](crate::Timeouts) applied: the one place
//! they are written. The server's handlers get a `Session`; a
//! [`Client`](crate::Client) forwards to one.

use core::marker::PhantomData;
use core::pin::pin;

use embassy_time::Instant;
use tinyproto::asynch::{Connection, IncomingMessage, OutgoingMessage};

use crate::error::{Deadline, Error};
use crate::out_of_line::OutOfLine;
use crate::socket::{after, Socket};
use crate::transport::Transport;

/// What a connection is, as the server's hooks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConnInfo {
    /// Index of the server's socket slot (0 for a client).
    pub slot: usize,
    /// The peer's address.
    pub remote: Option<embassy_net::IpEndpoint>,
}

impl ConnInfo {
    /// A client's connection to `remote` (slot 0).
    pub(crate) fn client(remote: embassy_net::IpEndpoint) -> Self {
        Self {
            slot: 0,
            remote: Some(remote),
        }
    }
}

/// One connection's operations, each bounded by the deadlines of its
/// [`Timeouts`](crate::Timeouts):
/// - greeting: [`Timeouts::greeting`](crate::Timeouts::greeting);
/// - `transmit` / `begin_transmit`: [`Timeouts::message`](crate::Timeouts::message)
///   from the call on;
/// - `receive` / `begin_receive`: up to [`Timeouts::receive`](crate::Timeouts::receive)
///   for the first byte, then `message` from that byte on (for a chunked
///   receive the reader keeps that deadline).
///
/// A deadline fails with `Error::Io(NetError::TimedOut(_))`; the message is
/// then resumable by calling the same operation again (fresh deadline), as
/// after any transport error — or close the connection. Over TLS
/// (`tls::TlsSocket`) only a `receive` that timed out
/// before its message began is resumable: a record cut in the middle ends
/// the TLS stream.
///
/// `T` is the byte stream: a [`Socket`] (the default), or TLS over one.
#[derive(Debug)]
pub struct Session<'s, 'a, T: Transport = Socket<'a>> {
    pub(crate) conn: &'s mut Connection<T>,
    pub(crate) info: ConnInfo,
    socket: PhantomData<&'a ()>,
}

impl<'s, 'a, T: Transport> Session<'s, 'a, T> {
    /// Wraps a connection (for using these operations on your own
    /// [`Connection`](crate::Connection)).
    pub fn new(conn: &'s mut Connection<T>, info: ConnInfo) -> Self {
        Self {
            conn,
            info,
            socket: PhantomData,
        }
    }

    /// Who the peer is.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// The core connection, for anything not wrapped here.
    pub fn connection(&mut self) -> &mut Connection<T> {
        self.conn
    }

    /// Exchanges the greeting if it has not happened yet.
    pub async fn greet(&mut self) -> Result<(), Error> {
        OutOfLine::new(pin!(self.greet_now())).await
    }

    /// The greeting itself: one copy in a firmware, however many
    /// operations greet first. This crate's operations await it as `greet`
    /// does, `OutOfLine::new(pin!(self.greet_now()))`, rather than through
    /// `greet`: an async layer fewer around every one of them (92 B of
    /// flash in the echo server, 264 B in the client).
    pub(crate) async fn greet_now(&mut self) -> Result<(), Error> {
        if self.conn.is_greeted() {
            return Ok(());
        }
        self.conn.get_mut().begin_exchange(Deadline::Greeting);
        let r = self.conn.greet().await;
        self.conn.get_mut().end_exchange();
        r
    }

    /// Sends one whole message (see `tinyproto::asynch::Connection::transmit`).
    ///
    /// **Who may send when.** The protocol is half-duplex: one message at a
    /// time on a connection. If the peer has begun a message of its own when
    /// ours is due, nothing is sent and this is
    /// [`Error::PeerSending`](tinyproto::Error::PeerSending) (the connection
    /// stays in step): there is no heap to hold the peer's message, so
    /// receive it first (in a server handler: return, and the slot's loop
    /// takes it), then send again. Only a peer that starts within the same
    /// round trip can still cross ours: that is
    /// [`Error::Conflict`](tinyproto::Error::Conflict), and the connection
    /// is aborted at once, so the peer learns it from the reset rather than
    /// from a deadline. Peers that both send whenever they like use one
    /// connection per direction ([`Client::join_duplex`](crate::Client::join_duplex)).
    pub async fn transmit(&mut self, msg: &[u8]) -> Result<(), Error> {
        OutOfLine::new(pin!(self.greet_now())).await?;
        self.peer_not_sending()?;
        self.conn.get_mut().begin_exchange(Deadline::Message);
        let r = self.conn.transmit(msg).await;
        self.conn.get_mut().end_exchange();
        self.crossed(r)
    }

    /// Receives one whole message into `buf`: waits up to
    /// [`Timeouts::receive`](crate::Timeouts::receive) for it to begin, then
    /// the message deadline for all of it. A longer message than `buf` is
    /// refused with 0x00 ([`Error::TooLarge`](tinyproto::Error::TooLarge);
    /// the connection stays usable).
    pub async fn receive<'b>(&mut self, buf: &'b mut [u8]) -> Result<&'b [u8], Error> {
        OutOfLine::new(pin!(self.greet_now())).await?;
        self.arm_receive(self.receive_limit());
        let r = self.conn.receive(buf).await;
        self.conn.get_mut().end_exchange();
        r
    }

    /// Starts a chunked receive of a message of at most `limit` bytes: read
    /// it with the returned reader (the message deadline applies to the
    /// reads).
    pub async fn begin_receive(&mut self, limit: u32) -> Result<IncomingMessage<'_, T>, Error> {
        OutOfLine::new(pin!(self.greet_now())).await?;
        self.arm_receive(self.receive_limit());
        self.conn.begin_receive(limit).await
    }

    /// Starts a chunked send of a message of `len` bytes; write them, then
    /// `finish`.
    pub async fn begin_transmit(&mut self, len: u32) -> Result<OutgoingMessage<'_, T>, Error> {
        self.prepare_transmit(len).await?;
        self.conn.begin_transmit(len).await
    }

    /// When a receive gives up on a message that has not begun:
    /// [`Timeouts::receive`](crate::Timeouts::receive) from now (`None`:
    /// never).
    pub(crate) fn receive_limit(&self) -> Option<(Instant, Deadline)> {
        self.conn
            .get_ref()
            .timeouts()
            .receive
            .map(|wait| (after(wait), Deadline::Receive))
    }

    /// Arms the receive deadlines, once greeted: a message already half in
    /// gets the message deadline at once; otherwise wait until `wait` for
    /// its first byte. Not async, so that each caller awaits the greeting
    /// itself: a future layer fewer around every receive.
    pub(crate) fn arm_receive(&mut self, wait: Option<(Instant, Deadline)>) {
        if self.conn.is_in_progress() {
            self.conn.get_mut().begin_exchange(Deadline::Message);
        } else {
            self.conn.get_mut().await_exchange(wait);
        }
    }

    /// Greets if need be, then sends the length of a chunked message and
    /// reads the peer's answer, so that a crossing can abort the socket;
    /// the core's `begin_transmit` then resumes at once with the writer.
    pub(crate) async fn prepare_transmit(&mut self, len: u32) -> Result<(), Error> {
        OutOfLine::new(pin!(self.greet_now())).await?;
        self.peer_not_sending()?;
        self.conn.get_mut().begin_exchange(Deadline::Message);
        let answered = self.conn.begin_transmit(len).await.map(drop);
        self.crossed(answered)
    }

    /// Before our length goes out: a message of the peer's that has begun
    /// would cross it.
    fn peer_not_sending(&mut self) -> Result<(), Error> {
        if self.conn.peer_has_begun()? {
            debug!("the peer is sending: ours waits");
            return Err(Error::PeerSending);
        }
        Ok(())
    }

    /// After a send, with what the socket shows: a 0x00 answer may be the
    /// peer's own length ([`tinyproto::zero_answer_is_a_length`]). A
    /// crossing puts both sides out of step; the peer learns it from the
    /// reset now, not from a deadline.
    fn crossed<R>(&mut self, r: Result<R, Error>) -> Result<R, Error> {
        let r = match r {
            Err(Error::Rejected { .. }) if self.conn.get_mut().zero_answer_is_a_length() => {
                Err(Error::Conflict)
            }
            other => other,
        };
        if let Err(Error::Conflict) = r {
            info!("the peer sent a message while we were sending ours: aborting");
            self.conn.break_off();
            // The reset leaves with the stack's next poll.
            self.conn.get_mut().reset();
        }
        r
    }
}
