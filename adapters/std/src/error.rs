//! The error of the std adapter: the core's protocol errors, plus deadlines,
//! plugins, panicking hooks and the connection registry.

use std::fmt;
use std::io;

use crate::id::ConnId;

/// A protocol error of the core over a `std::io` transport.
pub type ProtocolError = tinyproto::Error<io::Error>;

/// Which configured time limit ran out (see [`Timeouts`](crate::Timeouts)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Deadline {
    /// Establishing the TCP connection ([`Timeouts::connect`](crate::Timeouts::connect)).
    Connect,
    /// The greeting did not complete in time ([`Timeouts::greeting`](crate::Timeouts::greeting)).
    Greeting,
    /// A message that had started did not complete in time
    /// ([`Timeouts::message`](crate::Timeouts::message)): a slow or stalled peer.
    Message,
    /// A single write made no progress in time ([`Timeouts::write`](crate::Timeouts::write)):
    /// the peer stopped reading.
    Write,
    /// [`Conn::receive`](crate::Conn::receive) waited for a message that never
    /// began ([`Timeouts::receive`](crate::Timeouts::receive)).
    Receive,
    /// No message in either direction for [`Timeouts::idle`](crate::Timeouts::idle).
    Idle,
    /// The connection was still running when a graceful stop's drain timeout
    /// ran out; its socket was shut down and its thread left behind.
    Drain,
}

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Deadline::Connect => "connect",
            Deadline::Greeting => "greeting",
            Deadline::Message => "message",
            Deadline::Write => "write",
            Deadline::Receive => "receive",
            Deadline::Idle => "idle",
            Deadline::Drain => "drain",
        })
    }
}

/// Everything that can go wrong on a connection of this crate.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The protocol failed (see [`tinyproto::Error`]): a wrong greeting
    /// byte, an unexpected status, a close mid-message, a length over the
    /// limit, a rejection... Never [`tinyproto::Error::Io`]: the socket's
    /// errors are [`Error::Io`].
    Protocol(ProtocolError),
    /// The connection's socket failed (a reset, a broken pipe): the
    /// connection is closed. (A slow peer is an [`Error::Timeout`].)
    Io(io::Error),
    /// TLS failed (feature `tls`): the handshake (an untrusted or expired
    /// certificate, a wrong server name, a missing client certificate, a
    /// peer that does not speak TLS) or a record. The connection is closed.
    #[cfg(feature = "tls")]
    Tls(rustls::Error),
    /// The caller's own code failed: a hook's or a chunk consumer's own
    /// error (a file, a database), or the source of
    /// [`Conn::transmit_from`](crate::Conn::transmit_from). Returned from a
    /// hook it ends the connection, like any error that is not recoverable.
    Handler(Box<dyn std::error::Error + Send + Sync>),
    /// A configured time limit ran out. After any deadline but
    /// [`Deadline::Receive`] the connection is closed.
    Timeout(Deadline),
    /// A plugin refused to transform a message.
    Plugin(Box<dyn std::error::Error + Send + Sync>),
    /// A handler hook panicked; the payload's message, when it was a string.
    Panicked(String),
    /// No active connection has this id.
    UnknownConnection(ConnId),
    /// The connection's queue of messages from other connections is full.
    QueueFull(ConnId),
    /// A duplex link did not pair: a connection to a duplex server did not
    /// open with a duplex hello, or a server answered a duplex hello as a
    /// plain one.
    NotDuplex,
    /// The memory budget ([`Server::set_memory_budget`](crate::Server::set_memory_budget))
    /// had no room for a message of `len` bytes (it is larger than the
    /// whole budget, or no room came within the message deadline): it was
    /// answered 0x00 and the connection goes on.
    MemoryBudget {
        /// The announced length.
        len: u32,
        /// The whole budget, in bytes.
        budget: u64,
    },
    /// This connection is the up half of a duplex link: only the client
    /// sends on it. Send through its pair: `Connections::send_to` with this
    /// connection's id goes to the down half.
    UpHalf,
}

impl Error {
    /// Wraps an error of the caller's own code as [`Error::Handler`].
    pub fn handler(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Handler(e.into())
    }

    /// True when the peer closed the connection between messages: the normal end.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Protocol(tinyproto::Error::Closed))
    }

    /// True when a configured deadline ran out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// True when the connection is still in step after this error, so the
    /// caller may go on with it: the core's answer
    /// ([`tinyproto::Error::is_recoverable`]: a rejected or refused length,
    /// a misuse), a plugin failure, a [`Deadline::Receive`] wait, a registry
    /// error. A transport error is not: this crate's sockets block under
    /// deadlines, so an I/O error is a failed socket, and the connection
    /// is closed after it (a slow peer is a [`Error::Timeout`]).
    pub fn is_recoverable(&self) -> bool {
        match self {
            Error::Io(_) | Error::Handler(_) => false,
            #[cfg(feature = "tls")]
            Error::Tls(_) => false,
            Error::Protocol(tinyproto::Error::Io(_)) => false,
            Error::Protocol(e) => e.is_recoverable(),
            Error::Timeout(d) => *d == Deadline::Receive,
            Error::Plugin(_) | Error::UnknownConnection(_) | Error::QueueFull(_) => true,
            Error::UpHalf | Error::MemoryBudget { .. } => true,
            Error::Panicked(_) | Error::NotDuplex => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            #[cfg(feature = "tls")]
            Error::Tls(e) => write!(f, "TLS: {e}"),
            Error::Handler(e) => write!(f, "{e}"),
            Error::Timeout(d) => write!(f, "{d} deadline ran out"),
            Error::Plugin(e) => write!(f, "plugin failed: {e}"),
            Error::Panicked(msg) => write!(f, "handler panicked: {msg}"),
            Error::UnknownConnection(id) => write!(f, "no active connection {id}"),
            Error::QueueFull(id) => write!(f, "queue of connection {id} is full"),
            Error::MemoryBudget { len, budget } => write!(
                f,
                "no room for a message of {len} bytes in the memory budget of {budget} bytes \
                 (answered 0x00)"
            ),
            Error::NotDuplex => f.write_str("the peer is not half of a duplex link"),
            Error::UpHalf => {
                f.write_str("this is the up half of a duplex link: only the client sends on it")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Protocol(e) => Some(e),
            Error::Io(e) => Some(e),
            #[cfg(feature = "tls")]
            Error::Tls(e) => Some(e),
            Error::Plugin(e) | Error::Handler(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<ProtocolError> for Error {
    /// The socket's errors become [`Error::Io`] (or [`Error::Tls`]), the
    /// others [`Error::Protocol`].
    fn from(e: ProtocolError) -> Self {
        match e {
            tinyproto::Error::Io(e) => e.into(),
            e => Error::Protocol(e),
        }
    }
}

impl From<io::Error> for Error {
    /// A TLS failure rustls reported through the stream is [`Error::Tls`].
    fn from(e: io::Error) -> Self {
        #[cfg(feature = "tls")]
        if let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            return Error::Tls(tls.clone());
        }
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    /// Keeps a transport error as it was; wraps the others with a fitting kind.
    fn from(e: Error) -> Self {
        match e {
            Error::Protocol(e) => e.into(),
            Error::Io(e) => e,
            Error::Timeout(_) => io::Error::new(io::ErrorKind::TimedOut, e),
            Error::UnknownConnection(_) => io::Error::new(io::ErrorKind::NotFound, e),
            Error::QueueFull(_) => io::Error::new(io::ErrorKind::WouldBlock, e),
            other => io::Error::other(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinyproto::Phase;

    #[test]
    fn test_recoverable_errors_table() {
        let cases: Vec<(Error, bool)> = vec![
            (tinyproto::Error::Rejected { len: 9 }.into(), true),
            (
                tinyproto::Error::TooLarge {
                    len: 9,
                    capacity: 8,
                }
                .into(),
                true,
            ),
            (tinyproto::Error::Closed.into(), false),
            (
                tinyproto::Error::UnexpectedByte {
                    phase: Phase::Status,
                    byte: 0xFD,
                }
                .into(),
                false,
            ),
            (
                io::Error::from(io::ErrorKind::ConnectionReset).into(),
                false,
            ),
            (Error::Timeout(Deadline::Receive), true),
            (Error::Timeout(Deadline::Message), false),
            (Error::Plugin("bad".into()), true),
            (Error::Panicked("boom".into()), false),
            (Error::QueueFull(ConnId(1)), true),
            (Error::MemoryBudget { len: 9, budget: 8 }, true),
        ];
        for (e, recoverable) in cases {
            assert_eq!(e.is_recoverable(), recoverable, "{e:?}");
        }
        assert!(Error::from(tinyproto::Error::Closed).is_closed());
    }

    #[test]
    fn test_into_io_error_keeps_kinds() {
        let e: io::Error = Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).into();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        let e: io::Error = Error::Timeout(Deadline::Write).into();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "write deadline ran out");
        let e: io::Error = Error::UnknownConnection(ConnId(3)).into();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "no active connection conn#3");
    }
}
