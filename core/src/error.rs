//! The one error type of tinyproto, generic over the transport's error.
//!
//! The sans-IO [`Machine`](crate::Machine) never sees a transport, so it
//! returns `Error<Infallible>` (the default); drivers widen it
//! ([`Error::widen`]) and add their transport's errors as [`Error::Io`].

use core::convert::Infallible;
use core::fmt;

use crate::wire::Phase;

/// Everything that can go wrong on a tinyproto connection.
///
/// After [`Rejected`](Error::Rejected) and [`TooLarge`](Error::TooLarge) the
/// connection is still in step and may carry the next message. After
/// [`Io`](Error::Io) the operation may be resumed by calling it again (see the
/// driver docs). Every other variant leaves the connection
/// [broken](Error::Broken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
// A word-sized tag keeps the fields word-aligned: on Cortex-M an error then
// moves in two or three register loads instead of a `memcpy` call (which
// alone cost a firmware ~700 B of flash). The variants the connection goes
// on after come first, so that `is_recoverable` is one comparison of the
// tag (examples/footprint: its superloop asking it, 788 -> 620 B of flash;
// the driver build 1,060 -> 1,032 B). Keep them first.
#[repr(u32)]
pub enum Error<E = Infallible> {
    /// The transport failed; its error is kept as it was.
    Io(E),
    /// The peer answered our length with 0x00: it will not take the message.
    /// Nothing of the payload was sent; the connection stays usable.
    Rejected {
        /// The length we announced.
        len: u32,
    },
    /// A message larger than we can take or send. On receive, the peer was
    /// answered 0x00 and the connection stays usable; on send, nothing was sent.
    TooLarge {
        /// The announced (or requested) length.
        len: u32,
        /// The most we could take: buffer capacity, configured limit or
        /// [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN), whichever is smallest.
        capacity: u32,
    },
    /// The peer has begun a message of its own, so ours was not started:
    /// it would have crossed the peer's. Nothing was sent and the connection
    /// stays in step: receive the peer's message, then send again. Reported
    /// where the transport shows what has arrived (`peer_has_begun` on the
    /// drivers; tinyproto-embassy's sends).
    PeerSending,
    /// Another operation on this connection is half done (a cancelled future,
    /// a `WouldBlock`, a dropped chunk reader or writer). Finish it first by
    /// calling that operation again.
    InProgress,
    /// The caller asked for something the message in flight cannot do; nothing
    /// moved and the connection stays in step.
    Misuse(Misuse),
    /// The server is at its connection limit: it sent 0xFE instead of the
    /// greeting.
    ConnectionLimit,
    /// The peer sent a message while we were sending ours: where the answer
    /// to our length was due came a byte that can only open the peer's own
    /// length (0x01 to 0xF0; a 0x00 is read as a rejection unless the
    /// transport shows the rest of a length right behind it, see
    /// [`zero_answer_is_a_length`](crate::zero_answer_is_a_length)). The
    /// reference's reserved status 0xFD ([`Status::Conflict`](crate::Status::Conflict)),
    /// which it never sends, stays an [`UnexpectedByte`](Error::UnexpectedByte).
    /// Both sides are
    /// out of step: close the connection. Peers that both send take turns,
    /// or use one connection per direction.
    Conflict,
    /// A byte arrived where the protocol allows no such byte: a greeting other
    /// than 0xFF/0xFE, or a status that is neither an answer nor the start of
    /// a length (0xF1 to 0xFE). The connection is broken.
    UnexpectedByte {
        /// Where the byte arrived.
        phase: Phase,
        /// The byte itself.
        byte: u8,
    },
    /// The peer closed the connection between messages: a normal end.
    Closed,
    /// The peer closed the connection (or the transport took no more bytes)
    /// in the middle of an exchange. Nothing of a partial message is delivered.
    UnexpectedEof {
        /// Where the stream ended.
        phase: Phase,
    },
    /// An earlier error left the connection out of step; it carries nothing
    /// more. Close it.
    Broken,
}

/// A caller's mistake with the message in flight (see [`Error::Misuse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Misuse {
    /// A receive was resumed with a buffer shorter than the message its first
    /// call accepted. Resume with the first buffer.
    ShorterBuffer {
        /// The accepted message's length.
        len: u32,
    },
    /// A chunk was read or written past the message's announced length.
    PastEnd,
    /// A chunked send was finished while payload bytes were still owed.
    Unfinished {
        /// Payload bytes still owed.
        remaining: u32,
    },
    /// [`Machine::moved`](crate::Machine::moved) was told of I/O that cannot
    /// answer the step the connection's state asks for: another kind, a
    /// read before a due flush, more bytes than the field owes. Nothing was
    /// counted.
    WrongReport,
}

impl fmt::Display for Misuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misuse::ShorterBuffer { len } => write!(
                f,
                "receive resumed with a buffer shorter than the accepted {len} bytes"
            ),
            Misuse::PastEnd => f.write_str("chunk past the end of the message"),
            Misuse::Unfinished { remaining } => {
                write!(f, "message finished with {remaining} bytes still owed")
            }
            Misuse::WrongReport => f.write_str("reported I/O that the step did not ask for"),
        }
    }
}

impl<E> Error<E> {
    /// True when the connection is still in step after this error, so the
    /// caller may go on with it: the next message after a rejection, a
    /// refusal or a misuse, the same operation again after a transport error
    /// or [`InProgress`](Error::InProgress) (the message resumes where its
    /// bytes stopped). The adapters answer the same question for their own
    /// connections.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            Error::Io(_)
                | Error::Rejected { .. }
                | Error::TooLarge { .. }
                | Error::PeerSending
                | Error::InProgress
                | Error::Misuse(_)
        )
    }

    /// Applies `f` to the transport error, keeping every other variant.
    pub fn map_io<F>(self, f: impl FnOnce(E) -> F) -> Error<F> {
        match self {
            Error::Io(e) => Error::Io(f(e)),
            Error::Rejected { len } => Error::Rejected { len },
            Error::ConnectionLimit => Error::ConnectionLimit,
            Error::Conflict => Error::Conflict,
            Error::UnexpectedByte { phase, byte } => Error::UnexpectedByte { phase, byte },
            Error::TooLarge { len, capacity } => Error::TooLarge { len, capacity },
            Error::Closed => Error::Closed,
            Error::UnexpectedEof { phase } => Error::UnexpectedEof { phase },
            Error::PeerSending => Error::PeerSending,
            Error::InProgress => Error::InProgress,
            Error::Broken => Error::Broken,
            Error::Misuse(m) => Error::Misuse(m),
        }
    }
}

impl Error<Infallible> {
    /// Widens an error of the sans-IO [`Machine`](crate::Machine), which
    /// never sees a transport, to a driver's error type for transport `E`.
    pub fn widen<E>(self) -> Error<E> {
        self.map_io(|never| match never {})
    }
}

impl<E> From<E> for Error<E> {
    fn from(e: E) -> Self {
        Error::Io(e)
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "transport error: {e}"),
            Error::Rejected { len } => write!(f, "peer rejected a message of {len} bytes"),
            Error::ConnectionLimit => f.write_str("server is at its connection limit"),
            Error::Conflict => f.write_str("the peer sent a message while we were sending ours"),
            Error::UnexpectedByte { phase, byte } => {
                write!(f, "unexpected byte 0x{byte:02x} in the {phase}")
            }
            Error::TooLarge { len, capacity } => {
                write!(f, "message of {len} bytes is over the limit of {capacity}")
            }
            Error::Closed => f.write_str("connection closed by peer"),
            Error::UnexpectedEof { phase } => {
                write!(f, "connection ended in the middle of the {phase}")
            }
            Error::PeerSending => {
                f.write_str("the peer has begun a message: receive it first (nothing was sent)")
            }
            Error::InProgress => f.write_str("another operation is in progress"),
            Error::Broken => f.write_str("connection is out of step after an earlier error"),
            Error::Misuse(m) => write!(f, "misuse: {m}"),
        }
    }
}

impl<E: core::error::Error + 'static> core::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl<E: embedded_io::Error + 'static> embedded_io::Error for Error<E> {
    fn kind(&self) -> embedded_io::ErrorKind {
        use embedded_io::ErrorKind;
        match self {
            Error::Io(e) => e.kind(),
            Error::Rejected { .. } => ErrorKind::ConnectionRefused,
            Error::ConnectionLimit => ErrorKind::ConnectionRefused,
            Error::Conflict => ErrorKind::InvalidData,
            Error::UnexpectedByte { .. } => ErrorKind::InvalidData,
            Error::TooLarge { .. } => ErrorKind::OutOfMemory,
            Error::Closed => ErrorKind::NotConnected,
            Error::UnexpectedEof { .. } => ErrorKind::ConnectionAborted,
            Error::PeerSending => ErrorKind::Interrupted,
            Error::InProgress => ErrorKind::Other,
            Error::Broken => ErrorKind::NotConnected,
            Error::Misuse(_) => ErrorKind::InvalidInput,
        }
    }
}

#[cfg(feature = "std")]
impl From<Error<std::io::Error>> for std::io::Error {
    /// Keeps a transport error as it was; wraps protocol errors with the
    /// matching kind.
    fn from(e: Error<std::io::Error>) -> Self {
        match e {
            Error::Io(e) => e,
            other => {
                let kind = embedded_io::Error::kind(&other);
                std::io::Error::new(kind.into(), other)
            }
        }
    }
}
