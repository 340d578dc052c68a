//! The transport error of this adapter: what embassy-net and the deadlines
//! of [`Timeouts`](crate::Timeouts) can report. Everything else is the core's
//! [`tinyproto::Error`], which wraps this one in [`tinyproto::Error::Io`].

use core::fmt;

use embassy_net::tcp::{AcceptError, ConnectError};

/// Which deadline of [`Timeouts`](crate::Timeouts) passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Deadline {
    /// [`Timeouts::connect`](crate::Timeouts::connect): the TCP handshake.
    Connect,
    /// [`Timeouts::greeting`](crate::Timeouts::greeting): the 0xFF exchange.
    Greeting,
    /// [`Timeouts::message`](crate::Timeouts::message): one whole message,
    /// from its first byte to its last (a dripping peer ends here).
    Message,
    /// [`Timeouts::receive`](crate::Timeouts::receive): a `receive` waited
    /// for a message that never began (the connection stays usable).
    Receive,
    /// [`Timeouts::idle`](crate::Timeouts::idle): no message moved either way
    /// for this long; the server closes the connection.
    Idle,
    /// [`Timeouts::close`](crate::Timeouts::close): the orderly close.
    Close,
}

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Deadline::Connect => "connect",
            Deadline::Greeting => "greeting",
            Deadline::Message => "message",
            Deadline::Receive => "receive",
            Deadline::Idle => "idle",
            Deadline::Close => "close",
        })
    }
}

/// A transport failure on an embassy-net TCP socket.
///
/// A [`TimedOut`](NetError::TimedOut) leaves the core connection resumable
/// (the message stopped at a byte boundary, see `tinyproto::asynch`): call the
/// same operation again to go on, or close the connection. The server closes.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum NetError {
    /// The connection was reset (an RST, embassy-net's own socket timeout,
    /// or a read or write after the connection ended).
    ConnectionReset,
    /// The TCP connection could not be set up.
    Connect(ConnectError),
    /// The socket could not listen.
    Accept(AcceptError),
    /// A deadline passed before the operation completed.
    TimedOut(Deadline),
    /// [`Client::join_duplex`](crate::Client::join_duplex): the server did
    /// not welcome the down half (it is no duplex server).
    NotDuplex,
    /// TLS failed (feature `tls`): the handshake (an untrusted or misnamed
    /// server certificate, an alert from the server, which is how it refuses
    /// our certificate), or a record that did not decrypt. The connection
    /// is over.
    #[cfg(feature = "tls")]
    Tls(embedded_tls::TlsError),
}

/// Equal when of the same kind; two `NetError::Tls` compare by the kind of
/// TLS error (embedded-tls' errors do not compare).
impl PartialEq for NetError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (NetError::ConnectionReset, NetError::ConnectionReset)
            | (NetError::NotDuplex, NetError::NotDuplex) => true,
            (NetError::Connect(a), NetError::Connect(b)) => a == b,
            (NetError::Accept(a), NetError::Accept(b)) => a == b,
            (NetError::TimedOut(a), NetError::TimedOut(b)) => a == b,
            #[cfg(feature = "tls")]
            (NetError::Tls(a), NetError::Tls(b)) => {
                core::mem::discriminant(a) == core::mem::discriminant(b)
            }
            _ => false,
        }
    }
}

impl Eq for NetError {}

impl From<embassy_net::tcp::Error> for NetError {
    fn from(e: embassy_net::tcp::Error) -> Self {
        match e {
            embassy_net::tcp::Error::ConnectionReset => NetError::ConnectionReset,
        }
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::ConnectionReset => f.write_str("connection reset"),
            NetError::Connect(e) => write!(f, "connect failed: {e:?}"),
            NetError::Accept(e) => write!(f, "listen failed: {e:?}"),
            NetError::TimedOut(d) => write!(f, "{d} deadline passed"),
            NetError::NotDuplex => f.write_str("the server is no duplex server"),
            #[cfg(feature = "tls")]
            NetError::Tls(e) => write!(f, "TLS failed: {e:?}"),
        }
    }
}

impl core::error::Error for NetError {}

impl tinyproto::embedded_io::Error for NetError {
    fn kind(&self) -> tinyproto::embedded_io::ErrorKind {
        use tinyproto::embedded_io::ErrorKind;
        match self {
            NetError::ConnectionReset => ErrorKind::ConnectionReset,
            NetError::Connect(ConnectError::ConnectionReset) => ErrorKind::ConnectionRefused,
            NetError::Connect(ConnectError::TimedOut) => ErrorKind::TimedOut,
            NetError::Connect(_) => ErrorKind::NotConnected,
            NetError::Accept(_) => ErrorKind::AddrNotAvailable,
            NetError::TimedOut(_) => ErrorKind::TimedOut,
            NetError::NotDuplex => ErrorKind::Unsupported,
            #[cfg(feature = "tls")]
            NetError::Tls(_) => ErrorKind::PermissionDenied,
        }
    }
}

/// The error of every operation of this crate: the core's error over
/// [`NetError`].
pub type Error = tinyproto::Error<NetError>;
