//! [`Session`]: the tinyproto operations of one connection with the
//! deadlines of its [`Timeouts`](crate::Timeouts) applied, shared by the
//! client and by the server's handlers.

use core::marker::PhantomData;

use embassy_time::Instant;
use tinyproto::asynch::{Connection, IncomingMessage, OutgoingMessage};

use crate::error::{Deadline, Error};
use crate::socket::Socket;
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
        greet(self.conn).await
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
        transmit(self.conn, msg).await
    }

    /// Receives one whole message into `buf`.
    pub async fn receive<'b>(&mut self, buf: &'b mut [u8]) -> Result<&'b [u8], Error> {
        let wait = receive_limit(self.conn);
        receive(self.conn, buf, wait).await
    }

    /// Starts a chunked receive of a message of at most `limit` bytes.
    pub async fn begin_receive(&mut self, limit: u32) -> Result<IncomingMessage<'_, T>, Error> {
        let wait = receive_limit(self.conn);
        begin_receive(self.conn, limit, wait).await
    }

    /// Starts a chunked send of a message of `len` bytes.
    pub async fn begin_transmit(&mut self, len: u32) -> Result<OutgoingMessage<'_, T>, Error> {
        begin_transmit(self.conn, len).await
    }
}

/// When a receive gives up on a message that has not begun:
/// [`Timeouts::receive`](crate::Timeouts::receive) from now (`None`: never).
pub(crate) fn receive_limit<T: Transport>(conn: &Connection<T>) -> Option<(Instant, Deadline)> {
    conn.get_ref()
        .timeouts()
        .receive
        .map(|wait| (Instant::now() + wait, Deadline::Receive))
}

pub(crate) async fn greet<T: Transport>(conn: &mut Connection<T>) -> Result<(), Error> {
    if conn.is_greeted() {
        return Ok(());
    }
    conn.get_mut().begin_exchange(Deadline::Greeting);
    let r = conn.greet().await;
    conn.get_mut().end_exchange();
    r
}

pub(crate) async fn transmit<T: Transport>(
    conn: &mut Connection<T>,
    msg: &[u8],
) -> Result<(), Error> {
    greet(conn).await?;
    peer_not_sending(conn)?;
    conn.get_mut().begin_exchange(Deadline::Message);
    let r = conn.transmit(msg).await;
    conn.get_mut().end_exchange();
    crossed(conn, r)
}

/// Before our length goes out: a message of the peer's that has begun would
/// cross it.
fn peer_not_sending<T: Transport>(conn: &mut Connection<T>) -> Result<(), Error> {
    if conn.peer_has_begun()? {
        debug!("the peer is sending: ours waits");
        return Err(Error::PeerSending);
    }
    Ok(())
}

/// After a send, with what the socket shows: a 0x00 answer may be the
/// peer's own length ([`tinyproto::zero_answer_is_a_length`]). A crossing
/// puts both sides out of step; the peer learns it from the reset now, not
/// from a deadline.
fn crossed<T: Transport, R>(conn: &mut Connection<T>, r: Result<R, Error>) -> Result<R, Error> {
    let r = match r {
        Err(Error::Rejected { .. }) if conn.get_mut().zero_answer_is_a_length() => {
            Err(Error::Conflict)
        }
        other => other,
    };
    if let Err(Error::Conflict) = r {
        info!("the peer sent a message while we were sending ours: aborting");
        conn.break_off();
        // The reset leaves with the stack's next poll.
        conn.get_mut().reset();
    }
    r
}

/// Arms the receive deadlines: a message already half in gets the message
/// deadline at once; otherwise wait until `wait` for its first byte.
fn arm_receive<T: Transport>(conn: &mut Connection<T>, wait: Option<(Instant, Deadline)>) {
    if conn.is_in_progress() {
        conn.get_mut().begin_exchange(Deadline::Message);
    } else {
        conn.get_mut().await_exchange(wait);
    }
}

pub(crate) async fn receive<'b, T: Transport>(
    conn: &mut Connection<T>,
    buf: &'b mut [u8],
    wait: Option<(Instant, Deadline)>,
) -> Result<&'b [u8], Error> {
    greet(conn).await?;
    arm_receive(conn, wait);
    let r = conn.receive(buf).await;
    conn.get_mut().end_exchange();
    r
}

/// Reads the length of the next message: up to `wait` for its first byte,
/// then the message deadline. On success the exchange stays armed: the
/// caller takes (or rejects) the message under the same deadline, then ends
/// the exchange.
pub(crate) async fn next_length<T: Transport>(
    conn: &mut Connection<T>,
    wait: Option<(Instant, Deadline)>,
) -> Result<u32, Error> {
    greet(conn).await?;
    arm_receive(conn, wait);
    let r = conn.next_length().await;
    if r.is_err() {
        conn.get_mut().end_exchange();
    }
    r
}

pub(crate) async fn begin_receive<'c, T: Transport>(
    conn: &'c mut Connection<T>,
    limit: u32,
    wait: Option<(Instant, Deadline)>,
) -> Result<IncomingMessage<'c, T>, Error> {
    greet(conn).await?;
    arm_receive(conn, wait);
    conn.begin_receive(limit).await
}

pub(crate) async fn begin_transmit<'c, T: Transport>(
    conn: &'c mut Connection<T>,
    len: u32,
) -> Result<OutgoingMessage<'c, T>, Error> {
    greet(conn).await?;
    peer_not_sending(conn)?;
    conn.get_mut().begin_exchange(Deadline::Message);
    // The length and the peer's answer first, so that a crossing can abort
    // the socket; then the writer (the same call resumes at once).
    let answered = conn.begin_transmit(len).await.map(drop);
    crossed(conn, answered)?;
    conn.begin_transmit(len).await
}
