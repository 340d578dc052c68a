//! The connection as one sans-IO machine: greeting, the message in flight and
//! its resume rules, flushing, the broken state and the accept/reject rule.
//!
//! [`Machine`] never touches a transport, a clock or a future. Each operation
//! ([`Machine::transmit`], [`Machine::receive`], ...) returns a [`Step`]: either
//! the one piece of I/O it needs next ([`Io`]: write these bytes, read into
//! this buffer, flush) or [`Step::Done`] with the operation's result. The
//! caller does that I/O, reports what moved with [`Machine::moved`], and calls
//! the same operation again. The drivers in [`crate::blocking`] and
//! [`crate::asynch`] are exactly that loop:
//!
//! ```
//! use tinyproto::{Io, Machine, Moved, Step};
//!
//! let mut machine = Machine::new();
//! let mut wire = Vec::new(); // what we write
//! let mut peer: &[u8] = &[0xFF, 0xFF]; // the peer's greeting, then 0xFF to our length
//! let result = loop {
//!     let moved = match machine.transmit(b"hi") {
//!         Step::Io(Io::Write(bytes)) => {
//!             wire.extend_from_slice(bytes);
//!             Moved::Wrote(bytes.len())
//!         }
//!         Step::Io(Io::Read(buf)) => {
//!             let n = buf.len().min(peer.len());
//!             buf[..n].copy_from_slice(&peer[..n]);
//!             peer = &peer[n..];
//!             Moved::Read(n)
//!         }
//!         Step::Io(Io::Flush) => Moved::Flushed,
//!         Step::Done(result) => break result,
//!     };
//!     machine.moved(moved);
//! };
//! assert_eq!(result, Ok(()));
//! assert_eq!(wire, [0xFF, 0, 0, 0, 2, b'h', b'i']);
//! ```
//!
//! Payload bytes never pass through the machine: [`Io::Write`] and [`Io::Read`]
//! borrow the caller's message or buffer at the right offset, and the machine's
//! own header bytes (greeting, length, status) otherwise. State advances only
//! by bytes reported moved, so any operation may stop at any byte (an I/O
//! error, a dropped future) and resume when called again.

use crate::error::{Error, Misuse};
use crate::wire::{Phase, Status, GREETING, LENGTH_FIELD_LEN, MAX_MESSAGE_LEN};

/// When written bytes are flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FlushPolicy {
    /// Every operation that completes a message returns with what it wrote
    /// flushed (the default).
    #[default]
    EachMessage,
    /// Bytes may stay in the transport's buffer when an operation returns; the
    /// next read this connection does flushes them first (a peer only answers
    /// what it has seen, so nothing ever waits on them), and so does
    /// [`Machine::flush`]. Over a buffering transport, the end of one message
    /// and the length of the next leave together: back-to-back small messages
    /// at the protocol's limit. Call `flush` before the connection goes quiet.
    BeforeRead,
}

/// How an application takes a message whose length was announced (read with
/// [`Machine::next_length`]), decided before any of its payload moves. The
/// adapters' handlers return it; the machine's answer follows from it:
/// `Whole` and `Chunks` accept ([`Machine::receive`],
/// [`Machine::begin_receive`]), `Reject` answers 0x00 ([`Machine::reject`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Take {
    /// Whole, into a buffer that holds all of it.
    Whole,
    /// In chunks through a small buffer, to a sink (flash pages, a hash, a
    /// file): for messages larger than memory.
    Chunks,
    /// Answer 0x00: the peer keeps its message and the connection goes on.
    Reject,
}

/// One piece of I/O the machine needs; report it with [`Machine::moved`].
#[derive(Debug, PartialEq, Eq)]
pub enum Io<'a> {
    /// Write some of these bytes (the caller's payload or the machine's own
    /// header bytes), then report [`Moved::Wrote`].
    Write(&'a [u8]),
    /// Read into this buffer (the caller's or the machine's own), then report
    /// [`Moved::Read`]; a read of 0 bytes is the end of the stream.
    Read(&'a mut [u8]),
    /// Flush the transport, then report [`Moved::Flushed`].
    Flush,
}

/// What the transport did with the last [`Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Moved {
    /// This many bytes of an [`Io::Write`] left (0: the transport takes no more).
    Wrote(usize),
    /// This many bytes arrived in an [`Io::Read`] (0: end of stream).
    Read(usize),
    /// The [`Io::Flush`] completed.
    Flushed,
}

/// What an operation needs next, or its result.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a, R> {
    /// Do this I/O, report it with [`Machine::moved`], then call the same
    /// operation again.
    Io(Io<'a>),
    /// The operation is over.
    Done(Result<R, Error>),
}

/// Where a connection stands: which field moves next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum State {
    /// Our 0xFF goes out.
    GreetWrite,
    /// The peer's greeting byte comes in.
    GreetRead,
    /// Greeted, no message in flight.
    Idle,
    /// Our length field goes out.
    SendLength,
    /// The peer's answer to our length comes in.
    SendStatus,
    /// Our payload goes out.
    SendPayload,
    /// Every byte of our message left.
    Sent,
    /// The peer answered 0x00; no payload left.
    Rejected,
    /// The peer's length field comes in.
    RecvLength,
    /// The length is in; accept or reject is still to decide.
    Decide,
    /// Our answer to the length goes out: the status byte in `byte`.
    Answer,
    /// The peer's payload comes in.
    RecvPayload,
    /// The whole message arrived.
    Received,
    /// The message was refused; no payload follows.
    Refused,
    /// Out of step after a protocol error; carries nothing more.
    Broken,
    /// Broken before the greeting completed (a full server's 0xFE, say).
    GreetFailed,
}

/// The sans-IO state of one tinyproto connection (20 bytes).
///
/// See the [crate documentation](crate) and [`Step`] for the calling loop, and the
/// [`asynch`](crate::asynch) module for the cancellation and resumption rules
/// it implements.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Machine {
    /// The length field of the message in flight, as on the wire.
    length: [u8; LENGTH_FIELD_LEN],
    /// Bytes moved of the current field (length or payload).
    moved: u32,
    max_message_len: u32,
    state: State,
    /// Where a greeting or status byte is read.
    byte: u8,
    /// The message in flight moves in chunks (`begin_*`), not whole.
    chunked: bool,
    /// Bytes were written since the last flush.
    needs_flush: bool,
    flush_policy: FlushPolicy,
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an operation needs I/O (`None`: the state names it) or is over,
/// with a length (0 where the operation has none). One type for every
/// operation keeps one copy of the rules in a firmware.
type Poll = Option<Result<u32, Error>>;

impl Machine {
    /// A connection that has not greeted yet.
    pub const fn new() -> Self {
        Self {
            length: [0; LENGTH_FIELD_LEN],
            moved: 0,
            max_message_len: MAX_MESSAGE_LEN,
            state: State::GreetWrite,
            byte: 0,
            chunked: false,
            needs_flush: false,
            flush_policy: FlushPolicy::EachMessage,
        }
    }

    /// Caps the length of whole messages this side accepts, below the buffer
    /// given to each [`receive`](Self::receive) (longer ones are answered
    /// 0x00). A chunked receive is not held in memory: only the limit given
    /// to [`begin_receive`](Self::begin_receive) applies to it.
    pub fn set_max_message_len(&mut self, len: u32) {
        self.max_message_len = len.min(MAX_MESSAGE_LEN);
    }

    /// The cap set by [`set_max_message_len`](Self::set_max_message_len)
    /// ([`MAX_MESSAGE_LEN`] by default).
    pub fn max_message_len(&self) -> u32 {
        self.max_message_len
    }

    /// The longest message a [`receive`](Self::receive) into a buffer of
    /// `buf_len` bytes accepts: the buffer, capped by
    /// [`max_message_len`](Self::max_message_len).
    pub fn whole_capacity(&self, buf_len: usize) -> u32 {
        self.capped(len_of(buf_len), false)
    }

    /// A receive's `capacity` under the caps: whole messages are held, so
    /// the connection's cap applies to them; chunked ones keep their own
    /// limit. Neither goes past the protocol's [`MAX_MESSAGE_LEN`].
    fn capped(&self, capacity: u32, chunked: bool) -> u32 {
        let cap = if chunked {
            MAX_MESSAGE_LEN
        } else {
            self.max_message_len
        };
        capacity.min(cap)
    }

    /// Chooses when written bytes are flushed (see [`FlushPolicy`]).
    pub fn set_flush_policy(&mut self, policy: FlushPolicy) {
        self.flush_policy = policy;
    }

    /// The current [`FlushPolicy`].
    pub fn flush_policy(&self) -> FlushPolicy {
        self.flush_policy
    }

    /// True once both greeting bytes have crossed.
    pub fn is_greeted(&self) -> bool {
        !matches!(
            self.state,
            State::GreetWrite | State::GreetRead | State::GreetFailed
        )
    }

    /// True after a protocol error: the connection carries nothing more.
    pub fn is_broken(&self) -> bool {
        matches!(self.state, State::Broken | State::GreetFailed)
    }

    /// True while a message is half sent or half received.
    pub fn is_in_progress(&self) -> bool {
        !self.is_free()
    }

    /// True when bytes were written since the last flush.
    pub fn needs_flush(&self) -> bool {
        self.needs_flush
    }

    /// The length of the message in flight, once known.
    pub fn message_len(&self) -> Option<u32> {
        match self.state {
            State::GreetWrite | State::GreetRead | State::GreetFailed | State::Idle => None,
            State::RecvLength | State::Broken => None,
            _ => Some(self.announced()),
        }
    }

    /// Payload bytes still owed by the message in flight (0 outside a payload).
    pub fn remaining(&self) -> u32 {
        match self.state {
            State::SendPayload | State::RecvPayload => self.announced() - self.moved,
            _ => 0,
        }
    }

    /// Exchanges the greeting (0xFF each way). Every other operation greets
    /// first, so calling it is optional; it is where a full server's
    /// [`Error::ConnectionLimit`] shows up.
    pub fn greet(&mut self) -> Step<'_, ()> {
        let poll = match self.poll_greeted() {
            Some(poll) => poll,
            None => self.complete(Ok(0)),
        };
        self.step(poll, Payload::None, drop)
    }

    /// Sends `msg` whole: length, the peer's status, payload. Done with
    /// [`Error::Rejected`] if the peer refused the length (the connection
    /// stays usable), with [`Error::TooLarge`] for a message over
    /// [`MAX_MESSAGE_LEN`] (nothing sent; a length beyond `u32` is reported
    /// as `u32::MAX`). Resume a half-sent message by calling again with the
    /// same `msg`.
    pub fn transmit<'a>(&'a mut self, msg: &'a [u8]) -> Step<'a, ()> {
        let poll = self
            .poll_send(len_of(msg.len()), false)
            .or_else(|| match self.state {
                State::Sent => self.settle(Ok(0)),
                _ => None,
            });
        let rest = msg.get(self.moved as usize..).unwrap_or_default();
        self.step(poll, Payload::Out(rest), drop)
    }

    /// Reads the length of the next message and returns it without
    /// answering: follow with [`receive`](Self::receive),
    /// [`begin_receive`](Self::begin_receive) (which decide by their buffer
    /// or limit) or [`reject`](Self::reject). Waiting here may be abandoned
    /// freely until the first byte of the length arrives.
    pub fn next_length(&mut self) -> Step<'_, u32> {
        let poll = self.poll_length(None, false).or_else(|| match self.state {
            State::Decide => Some(Ok(self.announced())),
            _ => None,
        });
        self.step(poll, Payload::None, |len| len)
    }

    /// Answers 0x00 to the length read by [`next_length`](Self::next_length):
    /// the peer keeps its message and the connection goes on. Done with the
    /// refused length.
    pub fn reject(&mut self) -> Step<'_, u32> {
        if self.state == State::Decide {
            self.answer(Status::GenericError);
        }
        let poll = match self.state {
            State::Broken | State::GreetFailed => Some(Err(Error::Broken)),
            State::Answer if self.byte == Status::GenericError as u8 => None,
            State::Refused => self.settle(Ok(self.announced())),
            _ => Some(Err(Error::InProgress)),
        };
        self.step(poll, Payload::None, |len| len)
    }

    /// Receives one whole message into `buf`; done with its length.
    ///
    /// A length over `buf.len()` or [`max_message_len`](Self::max_message_len)
    /// is answered 0x00 and done with [`Error::TooLarge`]; the connection
    /// stays usable. [`Error::Closed`] when the peer closed between messages.
    /// Resume a half-received message by calling again with the same buffer.
    pub fn receive<'a>(&'a mut self, buf: &'a mut [u8]) -> Step<'a, usize> {
        let poll = self
            .poll_length(Some(len_of(buf.len())), false)
            .or_else(|| match self.state {
                // Only a resume with a smaller buffer than the first call can miss.
                State::RecvPayload if buf.len() < self.announced() as usize => {
                    Some(Err(Error::Misuse(Misuse::ShorterBuffer {
                        len: self.announced(),
                    })))
                }
                State::Received => self.settle(Ok(self.announced())),
                _ => None,
            });
        let offset = self.moved as usize;
        let rest = buf.get_mut(offset..).unwrap_or_default();
        self.step(poll, Payload::In(rest), |len| len as usize)
    }

    /// Starts receiving a message to be read in chunks with
    /// [`read_chunk`](Self::read_chunk); done with its length once the peer
    /// was answered 0xFF. Lengths over `limit` are answered 0x00 and done
    /// with [`Error::TooLarge`]. Call again to resume a dropped chunked receive.
    pub fn begin_receive(&mut self, limit: u32) -> Step<'_, u32> {
        let poll = self
            .poll_length(Some(limit), true)
            .or_else(|| match self.state {
                State::RecvPayload => Some(Ok(self.announced())),
                State::Received => self.settle(Ok(0)),
                _ => None,
            });
        self.step(poll, Payload::None, |len| len)
    }

    /// Reads the next chunk of a message begun with
    /// [`begin_receive`](Self::begin_receive) into `buf`. The [`Io::Read`]
    /// it asks for is the chunk itself (after a flush, perhaps): the bytes
    /// reported are the chunk's size. Done with 0 once the whole message has
    /// been read; it never reads past the message.
    pub fn read_chunk<'a>(&'a mut self, buf: &'a mut [u8]) -> Step<'a, usize> {
        let poll = match self.state {
            State::Broken | State::GreetFailed => Some(Err(Error::Broken)),
            State::RecvPayload if self.chunked && !buf.is_empty() => None,
            _ => Some(Ok(0)),
        };
        self.step(poll, Payload::In(buf), |n| n as usize)
    }

    /// Starts sending a message of `len` bytes to be written in chunks with
    /// [`write_chunk`](Self::write_chunk); done once the peer accepted the
    /// length, with [`Error::Rejected`] if it did not. Call again with the
    /// same `len` to resume a dropped chunked send.
    pub fn begin_transmit(&mut self, len: u32) -> Step<'_, ()> {
        let poll = match self.poll_send(len, true) {
            None if matches!(self.state, State::SendPayload | State::Sent) => Some(Ok(0)),
            poll => poll,
        };
        self.step(poll, Payload::None, drop)
    }

    /// Writes some of `chunk` of a message begun with
    /// [`begin_transmit`](Self::begin_transmit), never past its announced
    /// length. The [`Io::Write`] it asks for is the chunk itself: the bytes
    /// reported are what went. A chunk when nothing more is owed is
    /// [`Misuse::PastEnd`].
    pub fn write_chunk<'a>(&'a mut self, chunk: &'a [u8]) -> Step<'a, usize> {
        let poll = match self.state {
            State::Broken | State::GreetFailed => Some(Err(Error::Broken)),
            _ if chunk.is_empty() => Some(Ok(0)),
            State::SendPayload if self.chunked => None,
            _ => Some(Err(Error::Misuse(Misuse::PastEnd))),
        };
        self.step(poll, Payload::Out(chunk), |n| n as usize)
    }

    /// Completes a message begun with [`begin_transmit`](Self::begin_transmit)
    /// (flushing it under [`FlushPolicy::EachMessage`]) and frees the
    /// connection for the next one. [`Misuse::Unfinished`] while payload
    /// bytes are still owed.
    pub fn finish(&mut self) -> Step<'_, ()> {
        let poll = match self.state {
            State::Broken | State::GreetFailed => Some(Err(Error::Broken)),
            State::Sent if self.chunked => self.settle(Ok(0)),
            State::SendPayload if self.chunked => Some(Err(Error::Misuse(Misuse::Unfinished {
                remaining: self.remaining(),
            }))),
            _ => Some(Ok(0)),
        };
        self.step(poll, Payload::None, drop)
    }

    /// Flushes whatever was written, whatever the [`FlushPolicy`].
    pub fn flush(&mut self) -> Step<'_, ()> {
        let poll = (!self.needs_flush).then_some(Ok(0));
        self.step(poll, Payload::None, drop)
    }

    /// Reports what the transport did with the [`Io`] the last step asked
    /// for (report nothing for an I/O that failed or was cancelled). An error
    /// here is a protocol error (an unexpected byte, the end of the stream):
    /// the connection is broken and every later operation says
    /// [`Error::Broken`].
    pub fn moved(&mut self, moved: Moved) -> Result<(), Error> {
        let n = match moved {
            Moved::Flushed => {
                self.needs_flush = false;
                return Ok(());
            }
            Moved::Wrote(n) => {
                self.needs_flush |= n > 0;
                n
            }
            Moved::Read(n) => n,
        };
        if n == 0 {
            return self.fail(self.end_of_stream());
        }
        let len = self.announced();
        // A length or a payload: count the bytes until the field is complete.
        let field = match self.state {
            State::SendLength => Some((LENGTH_FIELD_LEN as u32, State::SendStatus)),
            State::RecvLength => Some((LENGTH_FIELD_LEN as u32, State::Decide)),
            State::SendPayload => Some((len, State::Sent)),
            // A chunked message is over when its reader has had the last byte.
            State::RecvPayload if self.chunked => Some((len, State::Idle)),
            State::RecvPayload => Some((len, State::Received)),
            _ => None,
        };
        if let Some((owed, next)) = field {
            self.moved = self.moved.saturating_add(len_of(n)).min(owed);
            if self.moved == owed {
                self.moved = 0;
                self.state = next;
            }
            return Ok(());
        }
        // A single byte: the greeting, a status.
        self.state = match (self.state, Status::from_byte(self.byte)) {
            (State::GreetWrite, _) => State::GreetRead,
            (State::GreetRead, Some(Status::Ok)) => State::Idle,
            (State::GreetRead, Some(Status::ConnectionLimit)) => {
                return self.fail(Error::ConnectionLimit)
            }
            (State::GreetRead, _) => return self.fail(self.unexpected(Phase::Greeting)),
            (State::SendStatus, Some(Status::Ok)) if len == 0 => State::Sent,
            (State::SendStatus, Some(Status::Ok)) => State::SendPayload,
            (State::SendStatus, Some(Status::GenericError)) => State::Rejected,
            (State::SendStatus, _) => return self.fail(self.unexpected(Phase::Status)),
            (State::Answer, Some(Status::Ok)) if len == 0 => State::Received,
            (State::Answer, Some(Status::Ok)) => State::RecvPayload,
            (State::Answer, _) => State::Refused,
            (other, _) => other,
        };
        Ok(())
    }

    // ---- the rules, without borrows: `None` means "do the state's I/O" ----

    /// `Some` while the greeting still needs I/O (`Some(None)`) or the
    /// connection is broken; `None` once greeted.
    fn poll_greeted(&mut self) -> Option<Poll> {
        match self.state {
            State::GreetWrite | State::GreetRead => Some(None),
            State::Broken | State::GreetFailed => Some(Some(Err(Error::Broken))),
            _ => None,
        }
    }

    /// Greets, then resumes the message in flight if it is of this kind, or
    /// starts one at `first` (sending `len` bytes, or receiving). `Some` when
    /// the greeting needs I/O or the operation is over already.
    fn begin(&mut self, first: State, len: u32, chunked: bool) -> Option<Poll> {
        if let Some(poll) = self.poll_greeted() {
            return Some(poll);
        }
        let resumes = match self.state {
            State::SendLength
            | State::SendStatus
            | State::SendPayload
            | State::Sent
            | State::Rejected => {
                first == State::SendLength && self.chunked == chunked && self.announced() == len
            }
            // Nothing is decided yet: any receive may go on with it.
            State::RecvLength | State::Decide => first == State::RecvLength,
            State::Answer | State::RecvPayload | State::Received | State::Refused => {
                first == State::RecvLength && self.chunked == chunked
            }
            _ => false,
        };
        if resumes {
            return None;
        }
        if !self.is_free() {
            return Some(Some(Err(Error::InProgress)));
        }
        if len > MAX_MESSAGE_LEN {
            return Some(Some(Err(Error::TooLarge {
                len,
                capacity: MAX_MESSAGE_LEN,
            })));
        }
        self.state = first;
        self.length = len.to_be_bytes();
        self.moved = 0;
        self.chunked = chunked;
        None
    }

    /// Greets, then resumes the send of a message of `len` bytes or starts
    /// one. `None` while I/O is due or once the payload is reached.
    fn poll_send(&mut self, len: u32, chunked: bool) -> Poll {
        if let Some(poll) = self.begin(State::SendLength, len, chunked) {
            return poll;
        }
        match self.state {
            State::Rejected => self.settle(Err(Error::Rejected { len })),
            _ => None,
        }
    }

    /// Greets, then resumes a receive or starts one, up to its length; with
    /// a `capacity`, decides on the length by it. `None` while I/O is due or
    /// once the payload is reached.
    fn poll_length(&mut self, capacity: Option<u32>, chunked: bool) -> Poll {
        if let Some(poll) = self.begin(State::RecvLength, 0, chunked) {
            return poll;
        }
        let len = self.announced();
        let capacity = capacity.map(|c| self.capped(c, chunked));
        match (self.state, capacity) {
            (State::Decide, Some(capacity)) => {
                self.chunked = chunked;
                self.answer(if len <= capacity {
                    Status::Ok
                } else {
                    Status::GenericError
                });
                None
            }
            (State::Refused, Some(capacity)) => self.settle(Err(Error::TooLarge { len, capacity })),
            _ => None,
        }
    }

    /// An operation is over: it returns once its bytes are flushed, if the
    /// policy wants them flushed.
    fn complete(&mut self, result: Result<u32, Error>) -> Poll {
        if self.needs_flush && self.flush_policy == FlushPolicy::EachMessage {
            None
        } else {
            Some(result)
        }
    }

    /// The message in flight is over: as [`complete`](Self::complete), and
    /// the connection is free for the next message when the operation returns.
    fn settle(&mut self, result: Result<u32, Error>) -> Poll {
        let poll = self.complete(result);
        if poll.is_some() {
            self.state = State::Idle;
        }
        poll
    }

    /// Breaks the connection with a protocol error.
    fn fail(&mut self, e: Error) -> Result<(), Error> {
        self.state = match self.state {
            State::GreetWrite | State::GreetRead => State::GreetFailed,
            _ => State::Broken,
        };
        Err(e)
    }

    /// Answers the announced length with `status`.
    fn answer(&mut self, status: Status) {
        self.state = State::Answer;
        self.byte = status.to_byte();
    }

    fn announced(&self) -> u32 {
        u32::from_be_bytes(self.length)
    }

    fn unexpected(&self, phase: Phase) -> Error {
        Error::UnexpectedByte {
            phase,
            byte: self.byte,
        }
    }

    /// The error for a stream that ended (or took no more bytes) now:
    /// [`Error::Closed`] between messages, [`Error::UnexpectedEof`] inside one.
    fn end_of_stream(&self) -> Error {
        let phase = match self.state {
            State::GreetWrite | State::GreetRead => Phase::Greeting,
            State::RecvLength if self.moved == 0 => return Error::Closed,
            State::Idle | State::Broken | State::GreetFailed => return Error::Closed,
            State::SendLength | State::RecvLength | State::Decide => Phase::Length,
            State::SendStatus | State::Rejected | State::Answer | State::Refused => Phase::Status,
            State::SendPayload | State::Sent | State::RecvPayload | State::Received => {
                Phase::Payload
            }
        };
        Error::UnexpectedEof { phase }
    }

    /// True when a new operation may take the connection: nothing of a
    /// message is half done.
    fn is_free(&self) -> bool {
        match self.state {
            State::GreetWrite
            | State::GreetRead
            | State::GreetFailed
            | State::Idle
            | State::Broken => true,
            State::Sent | State::Rejected => true,
            State::SendLength | State::RecvLength => self.moved == 0,
            _ => false,
        }
    }

    // ---- the one place that turns the state into I/O ----

    /// The result, or the I/O the state asks for next. `payload` starts at
    /// the current payload offset; `done` gives the result its type.
    fn step<'a, R>(
        &'a mut self,
        poll: Poll,
        payload: Payload<'a>,
        done: fn(u32) -> R,
    ) -> Step<'a, R> {
        match poll {
            Some(result) => Step::Done(result.map(done)),
            None => Step::Io(self.io(payload)),
        }
    }

    /// The I/O the state asks for next.
    fn io<'a>(&'a mut self, payload: Payload<'a>) -> Io<'a> {
        let remaining = self.remaining() as usize;
        let moved = self.moved as usize;
        let io = match (self.state, payload) {
            (State::GreetWrite, _) => Io::Write(&[GREETING]),
            (State::Answer, _) => Io::Write(core::slice::from_ref(&self.byte)),
            (State::SendLength, _) => Io::Write(self.length.get(moved..).unwrap_or_default()),
            (State::RecvLength, _) => Io::Read(self.length.get_mut(moved..).unwrap_or_default()),
            (State::GreetRead | State::SendStatus, _) => {
                Io::Read(core::slice::from_mut(&mut self.byte))
            }
            (State::SendPayload, Payload::Out(src)) => Io::Write(&src[..src.len().min(remaining)]),
            (State::RecvPayload, Payload::In(dest)) => {
                let len = dest.len().min(remaining);
                Io::Read(&mut dest[..len])
            }
            _ => Io::Flush,
        };
        // A peer only answers what it has seen: flush before waiting on it.
        match io {
            Io::Read(_) if self.needs_flush => Io::Flush,
            io => io,
        }
    }
}

/// The caller's side of a payload, from the current offset on.
enum Payload<'a> {
    None,
    Out(&'a [u8]),
    In(&'a mut [u8]),
}

/// A slice length as a wire length; lengths beyond `u32` saturate (and are
/// over [`MAX_MESSAGE_LEN`] either way).
fn len_of(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Phase;

    /// An in-memory peer: `input` is what it sends us, `output` what we
    /// wrote, `flushed` how much of it was flushed; each call moves at most
    /// `chunk` bytes.
    struct Peer<'p> {
        input: &'p [u8],
        output: std::vec::Vec<u8>,
        flushed: usize,
        chunk: usize,
        log: std::vec::Vec<&'static str>,
    }

    impl<'p> Peer<'p> {
        fn new(input: &'p [u8]) -> Self {
            Self {
                input,
                output: std::vec::Vec::new(),
                flushed: 0,
                chunk: usize::MAX,
                log: std::vec::Vec::new(),
            }
        }

        fn perform(&mut self, io: Io<'_>) -> Moved {
            match io {
                Io::Write(bytes) => {
                    let n = bytes.len().min(self.chunk);
                    self.output.extend_from_slice(&bytes[..n]);
                    self.log.push("write");
                    Moved::Wrote(n)
                }
                Io::Read(buf) => {
                    assert_eq!(self.flushed, self.output.len(), "read before flush");
                    let n = buf.len().min(self.input.len()).min(self.chunk);
                    buf[..n].copy_from_slice(&self.input[..n]);
                    self.input = &self.input[n..];
                    self.log.push("read");
                    Moved::Read(n)
                }
                Io::Flush => {
                    self.flushed = self.output.len();
                    self.log.push("flush");
                    Moved::Flushed
                }
            }
        }
    }

    /// Runs one operation to its end.
    macro_rules! run {
        ($machine:ident . $op:ident ( $($arg:expr),* ), $peer:expr) => {
            loop {
                match $machine.$op($($arg),*) {
                    Step::Io(io) => {
                        let moved = $peer.perform(io);
                        if let Err(e) = $machine.moved(moved) {
                            break Err(e);
                        }
                    }
                    Step::Done(result) => break result,
                }
            }
        };
    }

    #[test]
    fn test_greeting_then_transmit_flushes_before_reading_and_at_the_end() {
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF, 0xFF]);
        assert!(!m.is_greeted());
        assert_eq!(run!(m.transmit(b"abc"), peer), Ok(()));
        assert!(m.is_greeted());
        assert_eq!(peer.output, [0xFF, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(peer.flushed, peer.output.len(), "EachMessage flushes");
        assert_eq!(
            peer.log,
            ["write", "flush", "read", "write", "flush", "read", "write", "flush"]
        );
        assert!(!m.is_in_progress());
    }

    #[test]
    fn test_before_read_policy_leaves_the_payload_for_the_next_read() {
        let mut m = Machine::new();
        m.set_flush_policy(FlushPolicy::BeforeRead);
        let mut peer = Peer::new(&[0xFF, 0xFF, 0xFF]);
        assert_eq!(run!(m.transmit(b"one"), peer), Ok(()));
        assert!(m.needs_flush(), "payload held back");
        assert_eq!(peer.flushed, 5, "greeting and length flushed, payload not");
        assert_eq!(run!(m.transmit(b"two"), peer), Ok(()));
        // The second length waited with the first payload for the status read.
        assert_eq!(peer.flushed, 5 + 3 + 4);
        assert_eq!(run!(m.flush(), peer), Ok(()));
        assert_eq!(peer.flushed, peer.output.len());
        assert!(!m.needs_flush());
    }

    #[test]
    fn test_payload_io_borrows_the_callers_bytes_at_the_offset() {
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF, 0xFF]);
        peer.chunk = 2;
        let msg = *b"hello";
        let mut seen = std::vec::Vec::new();
        loop {
            match m.transmit(&msg) {
                Step::Io(Io::Write(bytes)) if m_is_payload(bytes, &msg) => {
                    seen.push(bytes.as_ptr() as usize - msg.as_ptr() as usize);
                    let n = bytes.len().min(2);
                    m.moved(Moved::Wrote(n)).unwrap();
                }
                Step::Io(io) => {
                    let moved = peer.perform(io);
                    m.moved(moved).unwrap();
                }
                Step::Done(r) => break r.unwrap(),
            }
        }
        assert_eq!(seen, [0, 2, 4], "offsets into the caller's message");
    }

    fn m_is_payload(bytes: &[u8], msg: &[u8]) -> bool {
        msg.as_ptr_range().contains(&bytes.as_ptr())
    }

    #[test]
    fn test_receive_accepts_within_capacity_and_rejects_over_it() {
        let mut m = Machine::new();
        let input = [0xFF, 0, 0, 0, 5, 0, 0, 0, 2, b'o', b'k'];
        let mut peer = Peer::new(&input);
        let mut buf = [0u8; 4];
        assert_eq!(
            run!(m.receive(&mut buf), peer),
            Err(Error::TooLarge {
                len: 5,
                capacity: 4
            })
        );
        assert_eq!(peer.flushed, peer.output.len(), "the 0x00 is flushed");
        assert_eq!(run!(m.receive(&mut buf), peer), Ok(2));
        assert_eq!(&buf[..2], b"ok");
        assert_eq!(peer.output, [0xFF, 0x00, 0xFF]);
    }

    #[test]
    fn test_max_message_len_caps_the_buffer() {
        let mut m = Machine::new();
        m.set_max_message_len(2);
        let mut peer = Peer::new(&[0xFF, 0, 0, 0, 3]);
        let mut buf = [0u8; 64];
        assert_eq!(
            run!(m.receive(&mut buf), peer),
            Err(Error::TooLarge {
                len: 3,
                capacity: 2
            })
        );
    }

    #[test]
    fn test_max_message_len_leaves_chunked_receives_to_their_limit() {
        let mut m = Machine::new();
        m.set_max_message_len(2);
        let mut peer = Peer::new(&[0xFF, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(run!(m.begin_receive(64), peer), Ok(3));
        assert_eq!(peer.output, [0xFF, 0xFF], "greeting, then accepted");
    }

    #[test]
    fn test_chunked_receive_never_takes_more_than_the_protocol_allows() {
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(
            run!(m.begin_receive(u32::MAX), peer),
            Err(Error::TooLarge {
                len: u32::MAX,
                capacity: MAX_MESSAGE_LEN
            })
        );
        assert_eq!(peer.output, [0xFF, 0x00], "greeting, then refused");
    }

    #[test]
    fn test_half_done_message_refuses_other_operations_and_resumes() {
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF, 0, 0, 0, 4, b'a', b'b']);
        let mut buf = [0u8; 8];
        // Run until the peer has nothing more (a stalled socket): half in.
        for _ in 0..20 {
            if let Step::Io(io) = m.receive(&mut buf) {
                match peer.perform(io) {
                    Moved::Read(0) => break,
                    moved => m.moved(moved).unwrap(),
                }
            }
        }
        assert!(m.is_in_progress());
        assert_eq!(m.remaining(), 2);
        assert_eq!(m.transmit(b"x"), Step::Done(Err(Error::InProgress)));
        assert_eq!(m.begin_receive(8), Step::Done(Err(Error::InProgress)));
        let mut short = [0u8; 3];
        assert_eq!(
            m.receive(&mut short),
            Step::Done(Err(Error::Misuse(Misuse::ShorterBuffer { len: 4 })))
        );
        let mut peer = Peer::new(b"cd");
        assert_eq!(run!(m.receive(&mut buf), peer), Ok(4));
        assert_eq!(&buf[..4], b"abcd");
        assert!(!m.is_in_progress());
    }

    #[test]
    fn test_waiting_for_a_message_that_has_not_started_is_not_in_progress() {
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF]);
        assert_eq!(run!(m.greet(), peer), Ok(()));
        let mut buf = [0u8; 8];
        assert!(matches!(m.receive(&mut buf), Step::Io(Io::Read(_))));
        assert!(!m.is_in_progress());
        assert!(matches!(m.transmit(b"x"), Step::Io(Io::Write(_))));
    }

    #[test]
    fn test_end_of_stream_reports_once_then_broken() {
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF, 0, 0]);
        let mut buf = [0u8; 8];
        assert_eq!(
            run!(m.receive(&mut buf), peer),
            Err(Error::UnexpectedEof {
                phase: Phase::Length
            })
        );
        assert!(m.is_broken());
        assert_eq!(m.transmit(b"x"), Step::Done(Err(Error::Broken)));
        assert_eq!(m.greet(), Step::Done(Err(Error::Broken)));
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF]);
        assert_eq!(run!(m.receive(&mut buf), peer), Err(Error::Closed));
        assert!(m.is_broken());
    }

    #[test]
    fn test_bad_status_breaks_and_sends_no_payload() {
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF, 0x42]);
        assert_eq!(
            run!(m.transmit(b"hello"), peer),
            Err(Error::UnexpectedByte {
                phase: Phase::Status,
                byte: 0x42
            })
        );
        assert_eq!(peer.output, [0xFF, 0, 0, 0, 5]);
        assert!(m.is_broken());
    }

    #[test]
    fn test_rejected_transmit_keeps_the_connection() {
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF, 0x00, 0xFF]);
        assert_eq!(
            run!(m.transmit(b"no"), peer),
            Err(Error::Rejected { len: 2 })
        );
        assert!(!m.is_broken() && !m.is_in_progress());
        assert_eq!(run!(m.transmit(b"ok"), peer), Ok(()));
        assert_eq!(peer.output, [0xFF, 0, 0, 0, 2, 0, 0, 0, 2, b'o', b'k']);
    }

    #[test]
    fn test_chunked_receive_never_reads_past_the_message() {
        let mut m = Machine::new();
        let input = [0xFF, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 1];
        let mut peer = Peer::new(&input);
        assert_eq!(run!(m.begin_receive(10), peer), Ok(3));
        let mut chunk = [0u8; 16];
        assert_eq!(
            m.read_chunk(&mut chunk),
            Step::Io(Io::Flush),
            "our 0xFF first"
        );
        m.moved(peer.perform(Io::Flush)).unwrap();
        match m.read_chunk(&mut chunk) {
            Step::Io(Io::Read(dest)) => assert_eq!(dest.len(), 3, "capped at the message"),
            other => panic!("{other:?}"),
        }
        let moved = peer.perform(match m.read_chunk(&mut chunk) {
            Step::Io(io) => io,
            other => panic!("{other:?}"),
        });
        assert_eq!(moved, Moved::Read(3));
        m.moved(moved).unwrap();
        assert_eq!(&chunk[..3], b"abc");
        assert!(!m.is_in_progress());
        assert_eq!(m.read_chunk(&mut chunk), Step::Done(Ok(0)));
        assert_eq!(peer.input, [0, 0, 0, 1], "the next message untouched");
    }

    #[test]
    fn test_chunked_receives_back_to_back() {
        let mut m = Machine::new();
        let input = [0xFF, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b'c'];
        let mut peer = Peer::new(&input);
        let mut chunk = [0u8; 8];
        for expected in [&b"ab"[..], b"c"] {
            assert_eq!(run!(m.begin_receive(8), peer), Ok(expected.len() as u32));
            let mut got = std::vec::Vec::new();
            while let Step::Io(io) = m.read_chunk(&mut chunk) {
                let moved = peer.perform(io);
                m.moved(moved).unwrap();
                if let Moved::Read(n) = moved {
                    got.extend_from_slice(&chunk[..n]);
                }
            }
            assert_eq!(got, expected);
            assert!(!m.is_in_progress());
        }
        assert_eq!(peer.output, [0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn test_chunked_send_misuse() {
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF, 0xFF]);
        assert_eq!(run!(m.begin_transmit(3), peer), Ok(()));
        assert_eq!(
            m.finish(),
            Step::Done(Err(Error::Misuse(Misuse::Unfinished { remaining: 3 })))
        );
        match m.write_chunk(b"abcdef") {
            Step::Io(Io::Write(bytes)) => {
                assert_eq!(bytes, b"abc", "never past the announced length");
                m.moved(Moved::Wrote(3)).unwrap();
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            m.write_chunk(b"d"),
            Step::Done(Err(Error::Misuse(Misuse::PastEnd)))
        );
        peer.output.extend_from_slice(b"abc");
        assert_eq!(run!(m.finish(), peer), Ok(()));
        assert_eq!(peer.flushed, peer.output.len());
        assert!(!m.is_in_progress() && !m.is_broken());
    }

    #[test]
    fn test_transmit_over_the_protocol_limit_sends_nothing() {
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF]);
        assert_eq!(
            run!(m.begin_transmit(MAX_MESSAGE_LEN + 1), peer),
            Err(Error::TooLarge {
                len: MAX_MESSAGE_LEN + 1,
                capacity: MAX_MESSAGE_LEN
            })
        );
        assert_eq!(peer.output, [0xFF], "the greeting only");
        assert!(!m.is_broken());
    }

    #[test]
    fn test_connection_limit_at_greeting() {
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFE]);
        assert_eq!(run!(m.greet(), peer), Err(Error::ConnectionLimit));
        assert!(m.is_broken());
    }

    #[test]
    fn test_size() {
        assert!(core::mem::size_of::<Machine>() <= 24);
    }
}
