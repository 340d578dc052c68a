//! [`Client`]: connect to a tinyproto server with deadlines, greet, talk,
//! close without losing data.

use core::pin::pin;

use embassy_futures::select::{select, Either};
use embassy_net::tcp::TcpSocket;
use embassy_net::{IpEndpoint, Stack};
use embassy_time::Timer;
use tinyproto::asynch::{Connection, IncomingMessage, OutgoingMessage};
use tinyproto::duplex::{self, Direction};

use crate::error::{Deadline, Error, NetError};
use crate::out_of_line::OutOfLine;
use crate::session::{ConnInfo, Session};
use crate::socket::{after, Socket, Timeouts};
use crate::transport::Transport;

/// A tinyproto client connection over an embassy-net TCP socket whose
/// buffers the caller owns.
///
/// ```no_run
/// # async fn demo(stack: embassy_net::Stack<'_>) -> Result<(), tinyproto_embassy::Error> {
/// use embassy_net::{IpEndpoint, Ipv4Address};
/// let (mut rx, mut tx) = ([0u8; 1024], [0u8; 1024]);
/// let server = IpEndpoint::new(Ipv4Address::new(192, 168, 1, 10).into(), 7000);
/// let timeouts = tinyproto_embassy::Timeouts::DEFAULT;
/// let mut client =
///     tinyproto_embassy::Client::connect(stack, &mut rx, &mut tx, server, timeouts).await?;
/// client.transmit(b"hello").await?;
/// let mut buf = [0u8; 256];
/// let reply = client.receive(&mut buf).await?;
/// # let _ = reply;
/// client.close().await?;
/// # Ok(()) }
/// ```
///
/// `T` is the byte stream: a [`Socket`] (the default), or TLS over one
/// (feature `tls`: `Client::connect_tls`).
#[derive(Debug)]
pub struct Client<'a, T: Transport = Socket<'a>> {
    conn: Connection<T>,
    info: ConnInfo,
    session_lifetime: core::marker::PhantomData<&'a ()>,
}

impl<'a> Client<'a> {
    /// Connects to `remote` within [`Timeouts::connect`] and exchanges the
    /// greeting within [`Timeouts::greeting`]. A full server shows up here as
    /// [`Error::ConnectionLimit`](tinyproto::Error::ConnectionLimit).
    ///
    /// The buffers stay borrowed even on failure; to retry with the same
    /// buffers use [`Client::connect_socket`], which hands the socket back.
    pub async fn connect(
        stack: Stack<'a>,
        rx_buffer: &'a mut [u8],
        tx_buffer: &'a mut [u8],
        remote: impl Into<IpEndpoint>,
        timeouts: Timeouts,
    ) -> Result<Self, Error> {
        let socket = Socket::new(TcpSocket::new(stack, rx_buffer, tx_buffer), timeouts);
        Self::connect_socket(socket, remote)
            .await
            .map_err(|(e, _)| e)
    }

    /// Like [`Client::connect`] over a socket you made (with
    /// [`Socket::new`]); on failure the socket comes back, closed and ready
    /// for another attempt.
    pub async fn connect_socket(
        mut socket: Socket<'a>,
        remote: impl Into<IpEndpoint>,
    ) -> Result<Self, (Error, Socket<'a>)> {
        let remote = remote.into();
        if let Err(e) = connect_tcp(&mut socket, remote).await {
            return Err((Error::Io(e), socket));
        }
        let mut conn = Connection::new(socket);
        let info = ConnInfo::client(remote);
        let greeted = OutOfLine::new(pin!(Session::new(&mut conn, info).greet_now())).await;
        if let Err(e) = greeted {
            debug!("greeting with {:?} failed: {:?}", remote, e);
            let mut socket = conn.into_inner();
            let _ = socket.close().await;
            socket.abort().await;
            return Err((e, socket));
        }
        Ok(Self::greeted(conn, info))
    }
}

impl<'a, T: Transport> Client<'a, T> {
    /// A client over a connection that has exchanged the greeting.
    pub(crate) fn greeted(conn: Connection<T>, info: ConnInfo) -> Self {
        Self {
            conn,
            info,
            session_lifetime: core::marker::PhantomData,
        }
    }

    /// The operations with their deadlines, as the server's handlers get them.
    pub fn session(&mut self) -> Session<'_, 'a, T> {
        Session::new(&mut self.conn, self.info)
    }

    /// Makes this connection one half of a duplex link to a duplex server
    /// (tinyproto-std's `Server::set_duplex`): one connection per
    /// direction, so that the device and the server both send whenever they
    /// like and nothing crosses. Sends the hello of the `direction` half of
    /// link `link`; for the down half, waits (within [`Timeouts::receive`])
    /// for the server's welcome, after which only the server sends on it.
    /// Open two clients, join the down half first, then send on the up half
    /// and receive on the down half. `link` names the pair: take it from the
    /// board's random number generator.
    /// `Error::Io(NetError::NotDuplex)` when the server does not welcome the
    /// down half.
    pub async fn join_duplex(&mut self, direction: Direction, link: u128) -> Result<(), Error> {
        let mut hello = [0u8; duplex::HELLO_MAX_LEN];
        self.transmit(duplex::hello(direction, link, &mut hello))
            .await?;
        if direction == Direction::Down {
            let mut welcome = [0u8; duplex::WELCOME.len()];
            match self.receive(&mut welcome).await {
                Ok(msg) if msg == duplex::WELCOME => {}
                Ok(_) | Err(Error::TooLarge { .. }) => return Err(Error::Io(NetError::NotDuplex)),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends one whole message within [`Timeouts::message`]: see
    /// [`Session::transmit`] ([`Error::Rejected`](tinyproto::Error::Rejected)
    /// if the server refused its length, and the connection stays usable;
    /// [`Error::PeerSending`](tinyproto::Error::PeerSending) when a message of
    /// the server's has begun).
    pub async fn transmit(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.session().transmit(msg).await
    }

    /// Receives one whole message into `buf`: see [`Session::receive`]
    /// (waits up to [`Timeouts::receive`] for it to begin, `None`: as long
    /// as it takes).
    pub async fn receive<'b>(&mut self, buf: &'b mut [u8]) -> Result<&'b [u8], Error> {
        self.session().receive(buf).await
    }

    /// Starts a chunked receive of a message of up to `limit` bytes, larger
    /// than any buffer: see [`Session::begin_receive`].
    pub async fn begin_receive(&mut self, limit: u32) -> Result<IncomingMessage<'_, T>, Error> {
        let mut session = self.session();
        let wait = session.receive_limit();
        OutOfLine::new(pin!(session.greet_now())).await?;
        session.arm_receive(wait);
        self.conn.begin_receive(limit).await
    }

    /// Starts a chunked send of `len` bytes; write them, then `finish`: see
    /// [`Session::begin_transmit`].
    pub async fn begin_transmit(&mut self, len: u32) -> Result<OutgoingMessage<'_, T>, Error> {
        self.session().prepare_transmit(len).await?;
        self.conn.begin_transmit(len).await
    }

    /// The core connection (for `set_max_message_len`, state queries…).
    pub fn connection(&mut self) -> &mut Connection<T> {
        &mut self.conn
    }

    /// Closes in order (see [`Socket::close`]; over TLS, after TLS's own
    /// close): `Ok` once the server has acknowledged everything written and
    /// our FIN.
    pub async fn close(self) -> Result<(), Error> {
        self.conn.into_inner().shutdown().await.map_err(Error::Io)
    }
}

/// Opens the TCP connection within [`Timeouts::connect`]; on failure the
/// socket is aborted, ready for another attempt.
pub(crate) async fn connect_tcp(
    socket: &mut Socket<'_>,
    remote: IpEndpoint,
) -> Result<(), NetError> {
    let deadline = Timer::at(after(socket.timeouts().connect));
    let connected = match select(socket.tcp_mut().connect(remote), deadline).await {
        Either::First(r) => r.map_err(NetError::Connect),
        Either::Second(()) => Err(NetError::TimedOut(Deadline::Connect)),
    };
    if let Err(e) = connected {
        debug!("connect to {:?} failed: {:?}", remote, e);
        socket.abort().await;
    }
    connected
}
