//! The connection as one sans-IO machine: every rule of the protocol, once.
//!
//! [`Machine`] owns the greeting, the message in flight and its resume rules,
//! the accept/reject rule, flushing and the broken state. It never touches a
//! transport, a clock or a future. Each operation ([`Machine::transmit`],
//! [`Machine::receive`], ...) returns a [`Step`]: either the one piece of I/O
//! it needs next ([`Io`]: write these bytes, read into this buffer, flush) or
//! [`Step::Done`] with the operation's result. The caller does that I/O,
//! reports what moved with [`Machine::moved`], and calls the same operation
//! again. The drivers in [`crate::blocking`] and [`crate::asynch`] are exactly
//! that loop, and so is a superloop that polls a UART.
//! See [`Machine`] for that loop in full.
//!
//! Payload bytes never pass through the machine: [`Io::Write`] and [`Io::Read`]
//! borrow the caller's message or buffer at the right offset, and the machine's
//! own header bytes (greeting, length, status) otherwise. State advances only
//! by bytes reported moved, so any operation may stop at any byte (an I/O
//! error, a dropped future, a UART with nothing to read yet) and resume when
//! called again.
//!
//! How the file reads: the public types; the operations, each a few lines
//! of rules ending in `Next` (the greeting and the four message operations
//! are one, `exchange`, with the arguments of each built once in
//! [`exchange`], which the drivers use too: one loop for all five in a
//! firmware); then [`Machine::moved`] with the one table of what completes
//! each field (`field_done`, with the rules for a peer's byte in
//! `refused_by_peer`); then the one place that turns a state into I/O
//! (`io`). The state's number says which way its field moves and which
//! [`Phase`] it is, so `moved` and `io` compute both instead of matching;
//! the machine counts what the field still owes, so neither computes its
//! length.

use crate::error::{Error, Misuse};
use crate::wire::{
    Phase, Status, GREETING, LENGTH_FIELD_LEN, MAX_LENGTH_FIRST_BYTE, MAX_MESSAGE_LEN,
};

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

impl<'a> Step<'a, u32> {
    /// Gives the result its operation's type.
    #[inline(always)]
    fn map<R>(self, f: fn(u32) -> R) -> Step<'a, R> {
        match self {
            Step::Io(io) => Step::Io(io),
            Step::Done(result) => Step::Done(result.map(f)),
        }
    }
}

/// The greeting or one of the four message operations, as a value: what a
/// superloop keeps for the operation in flight and hands to
/// [`Machine::step`] on every pass, so that one call site runs them all.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Operation<'a> {
    /// [`Machine::greet`].
    Greet,
    /// [`Machine::transmit`] of this message.
    Transmit(&'a [u8]),
    /// [`Machine::receive`] into this buffer.
    Receive(&'a mut [u8]),
    /// [`Machine::begin_transmit`] of a message of this length.
    BeginTransmit(u32),
    /// [`Machine::begin_receive`] with this limit.
    BeginReceive(u32),
}

/// Where a connection stands: which field moves next. The first eight
/// states each move one field, and their numbers say how: even ones write,
/// odd ones read, and half the number is the field's [`Phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
enum State {
    /// Our 0xFF goes out.
    GreetWrite = 0,
    /// The peer's greeting byte comes in.
    GreetRead = 1,
    /// Our length field goes out.
    SendLength = 2,
    /// The peer's length field comes in.
    RecvLength = 3,
    /// Our answer to the length goes out: the status byte in `byte`.
    Answer = 4,
    /// The peer's answer to our length comes in.
    SendStatus = 5,
    /// Our payload goes out.
    SendPayload = 6,
    /// The peer's payload comes in.
    RecvPayload = 7,
    /// Greeted, no message in flight.
    Idle,
    /// Every byte of our message left.
    Sent,
    /// The peer answered 0x00; no payload left.
    Rejected,
    /// The length is in; accept or reject is still to decide.
    Decide,
    /// The whole message arrived.
    Received,
    /// The message was refused; no payload follows.
    Refused,
    /// Out of step after a protocol error; carries nothing more.
    Broken,
    /// Broken before the greeting completed (a full server's 0xFE, say).
    GreetFailed,
}

impl State {
    /// `Some(true)` where the state writes its field, `Some(false)` where
    /// it reads it, `None` where nothing moves.
    fn writes(self) -> Option<bool> {
        let code = self as u8;
        (code < State::Idle as u8).then_some(code & 1 == 0)
    }

    /// The field a moving state moves, as errors name it.
    fn phase(self) -> Phase {
        match self as u8 >> 1 {
            0 => Phase::Greeting,
            1 => Phase::Length,
            2 => Phase::Status,
            _ => Phase::Payload,
        }
    }
}

/// What an operation's rules decided: the state's I/O is due, a flush is due
/// before the operation may return, or the operation is over (with a length,
/// 0 where the operation has none). One type for every operation keeps one
/// copy of `Machine::next_step` in a firmware.
pub(crate) enum Next {
    Io,
    Flush,
    Done(Result<u32, Error>),
    /// The message in flight is over with this result: the operation
    /// returns once its bytes are flushed (if the policy wants them
    /// flushed), and the connection is then free for the next message.
    Settle(Result<u32, Error>),
}

/// The sans-IO state of one tinyproto connection (16 bytes): every rule of
/// the protocol, driven by a loop that does the I/O each step asks for.
///
/// ```
/// use tinyproto::{Io, Machine, Moved, Step};
///
/// let mut machine = Machine::new();
/// let mut wire = Vec::new(); // what we write
/// let mut peer: &[u8] = &[0xFF, 0xFF]; // the peer's greeting, then 0xFF to our length
/// let result = loop {
///     let moved = match machine.transmit(b"hi") {
///         Step::Io(Io::Write(bytes)) => {
///             wire.extend_from_slice(bytes);
///             Moved::Wrote(bytes.len())
///         }
///         Step::Io(Io::Read(buf)) => {
///             let n = buf.len().min(peer.len());
///             buf[..n].copy_from_slice(&peer[..n]);
///             peer = &peer[n..];
///             Moved::Read(n)
///         }
///         Step::Io(Io::Flush) => Moved::Flushed,
///         Step::Done(result) => break result,
///     };
///     machine.moved(moved).unwrap();
/// };
/// assert_eq!(result, Ok(()));
/// assert_eq!(wire, [0xFF, 0, 0, 0, 2, b'h', b'i']);
/// ```
///
/// Payload bytes never pass through the machine: [`Io::Write`] and
/// [`Io::Read`] borrow the caller's message or buffer at the right offset.
/// State advances only by bytes reported moved, so an operation may stop at
/// any byte and resume when called again; the [`asynch`](crate::asynch)
/// module states the cancellation and resumption rules this gives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Machine {
    /// The length field of the message in flight, as on the wire.
    length: [u8; LENGTH_FIELD_LEN],
    /// Bytes the current field (greeting, length, status or payload) still
    /// owes.
    owed: u32,
    max_message_len: u32,
    state: State,
    /// Our greeting or answer as it goes out, or the peer's greeting or
    /// status byte as it comes in.
    byte: u8,
    /// The operation that owns the message in flight (a chunked one moves
    /// it in chunks, `begin_*`, not whole).
    op: Op,
    /// [`UNFLUSHED`] and [`FLUSH_BEFORE_READ`]: two flags in one byte keep
    /// the machine at 16 bytes.
    flags: u8,
}

/// Bytes were written since the last flush.
const UNFLUSHED: u8 = 2;
/// The flush policy is [`FlushPolicy::BeforeRead`].
const FLUSH_BEFORE_READ: u8 = 4;

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine {
    /// A connection that has not greeted yet.
    pub const fn new() -> Self {
        Self {
            length: [0; LENGTH_FIELD_LEN],
            // The greeting's one byte.
            owed: 1,
            max_message_len: MAX_MESSAGE_LEN,
            state: State::GreetWrite,
            // The greeting is the first byte we write.
            byte: GREETING,
            op: Op::Greet,
            flags: 0,
        }
    }

    // ---- settings and queries ----

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
        len_of(buf_len).min(self.max_message_len)
    }

    /// Chooses when written bytes are flushed (see [`FlushPolicy`]).
    pub fn set_flush_policy(&mut self, policy: FlushPolicy) {
        self.flags &= !FLUSH_BEFORE_READ;
        if policy == FlushPolicy::BeforeRead {
            self.flags |= FLUSH_BEFORE_READ;
        }
    }

    /// The current [`FlushPolicy`].
    pub fn flush_policy(&self) -> FlushPolicy {
        if self.flags & FLUSH_BEFORE_READ == 0 {
            FlushPolicy::EachMessage
        } else {
            FlushPolicy::BeforeRead
        }
    }

    /// True once both greeting bytes have crossed.
    pub fn is_greeted(&self) -> bool {
        !matches!(
            self.state,
            State::GreetWrite | State::GreetRead | State::GreetFailed
        )
    }

    /// True after a protocol error: the connection carries nothing more.
    /// An error the machine returns while not broken is
    /// [recoverable](Error::is_recoverable) exactly when the machine is not
    /// broken after it, so a superloop may ask the machine instead of the
    /// error.
    pub fn is_broken(&self) -> bool {
        matches!(self.state, State::Broken | State::GreetFailed)
    }

    /// True when greeted, not broken, and nothing of a message is in flight:
    /// where a new message of either side may begin.
    pub fn is_between_messages(&self) -> bool {
        self.is_greeted() && !self.is_broken() && self.is_free()
    }

    /// Puts the connection out of step for good, for what an adapter learns
    /// beyond the bytes reported (its transport shows that a 0x00 answer was
    /// the start of the peer's own length: a conflict): every later
    /// operation says [`Error::Broken`].
    pub fn break_off(&mut self) {
        self.state = State::Broken;
    }

    /// True while a message is half sent or half received.
    pub fn is_in_progress(&self) -> bool {
        !self.is_free()
    }

    /// True when bytes were written since the last flush.
    pub fn needs_flush(&self) -> bool {
        self.flags & UNFLUSHED != 0
    }

    /// Payload bytes still owed by the message in flight (0 outside a payload).
    pub fn remaining(&self) -> u32 {
        match self.state {
            State::SendPayload | State::RecvPayload => self.owed,
            _ => 0,
        }
    }

    // ---- the operations: each a few rules, then `step` ----

    /// Exchanges the greeting (0xFF each way). Every other operation greets
    /// first, so calling it is optional; it is where a full server's
    /// [`Error::ConnectionLimit`] shows up.
    pub fn greet(&mut self) -> Step<'_, ()> {
        self.run(exchange::greet()).map(drop)
    }

    /// Writes this side's greeting byte and flushes it, without waiting for
    /// the peer's: done once it is out. A server does this as it accepts,
    /// so that a client's greeting completes before the connection is
    /// served; [`greet`](Self::greet) (or any operation) reads the peer's
    /// later.
    pub fn send_greeting(&mut self) -> Step<'_, ()> {
        let next = match self.state {
            State::GreetWrite => Next::Io,
            State::GreetRead if self.needs_flush() => Next::Flush,
            State::Broken | State::GreetFailed => Next::Done(Err(Error::Broken)),
            _ => Next::Done(Ok(0)),
        };
        self.next_step(next, Payload::None).map(drop)
    }

    /// Sends `msg` whole: length, the peer's status, payload. Done with
    /// [`Error::Rejected`] if the peer refused the length (the connection
    /// stays usable), with [`Error::TooLarge`] for a message over
    /// [`MAX_MESSAGE_LEN`] (nothing sent; a length beyond `u32` is reported
    /// as `u32::MAX`). Resume a half-sent message by calling again with the
    /// same `msg`.
    pub fn transmit<'a>(&'a mut self, msg: &'a [u8]) -> Step<'a, ()> {
        self.run(exchange::transmit(msg)).map(drop)
    }

    /// Starts sending a message of `len` bytes to be written in chunks with
    /// [`write_chunk`](Self::write_chunk); done once the peer accepted the
    /// length, with [`Error::Rejected`] if it did not. Call again with the
    /// same `len` to resume a dropped chunked send.
    pub fn begin_transmit(&mut self, len: u32) -> Step<'_, ()> {
        self.run(exchange::begin_transmit(len)).map(drop)
    }

    /// Writes some of `chunk` of a message begun with
    /// [`begin_transmit`](Self::begin_transmit), never past its announced
    /// length. The [`Io::Write`] it asks for is the chunk itself: the bytes
    /// reported are what went. A chunk when nothing more is owed is
    /// [`Misuse::PastEnd`].
    pub fn write_chunk<'a>(&'a mut self, chunk: &'a [u8]) -> Step<'a, usize> {
        let chunk = Payload::Out(chunk);
        let next = self.write_chunk_rules(&chunk);
        self.next_step(next, chunk).map(|n| n as usize)
    }

    /// [`write_chunk`](Self::write_chunk)'s rules.
    pub(crate) fn write_chunk_rules(&mut self, chunk: &Payload<'_>) -> Next {
        match self.state {
            State::Broken | State::GreetFailed => Next::Done(Err(Error::Broken)),
            _ if chunk.is_empty() => Next::Done(Ok(0)),
            State::SendPayload if self.op.is_chunked() => Next::Io,
            _ => Next::Done(Err(Error::Misuse(Misuse::PastEnd))),
        }
    }

    /// Completes a message begun with [`begin_transmit`](Self::begin_transmit)
    /// (flushing it under [`FlushPolicy::EachMessage`]) and frees the
    /// connection for the next one. [`Misuse::Unfinished`] while payload
    /// bytes are still owed.
    pub fn finish(&mut self) -> Step<'_, ()> {
        let next = self.finish_rules(&Payload::None);
        self.next_step(next, Payload::None).map(drop)
    }

    /// [`finish`](Self::finish)'s rules.
    pub(crate) fn finish_rules(&mut self, _: &Payload<'_>) -> Next {
        match self.state {
            State::Broken | State::GreetFailed => Next::Done(Err(Error::Broken)),
            State::Sent if self.op.is_chunked() => Next::Settle(Ok(0)),
            State::SendPayload if self.op.is_chunked() => {
                Next::Done(Err(Error::Misuse(Misuse::Unfinished {
                    remaining: self.remaining(),
                })))
            }
            _ => Next::Done(Ok(0)),
        }
    }

    /// Reads the length of the next message and returns it without
    /// answering: follow with [`receive`](Self::receive),
    /// [`begin_receive`](Self::begin_receive) (which decide by their buffer
    /// or limit) or [`reject`](Self::reject). Waiting here may be abandoned
    /// freely until the first byte of the length arrives.
    pub fn next_length(&mut self) -> Step<'_, u32> {
        let next = self.next_length_rules(&Payload::None);
        self.next_step(next, Payload::None)
    }

    /// [`next_length`](Self::next_length)'s rules.
    pub(crate) fn next_length_rules(&mut self, _: &Payload<'_>) -> Next {
        match self.open(Op::Receive, 0) {
            Next::Io => match self.state {
                State::Decide => Next::Done(Ok(self.announced())),
                State::GreetWrite | State::GreetRead | State::RecvLength => Next::Io,
                // A receive has answered already: it is that receive's to finish.
                _ => Next::Done(Err(Error::InProgress)),
            },
            next => next,
        }
    }

    /// Answers 0x00 to the length read by [`next_length`](Self::next_length):
    /// the peer keeps its message and the connection goes on. Done with the
    /// refused length.
    pub fn reject(&mut self) -> Step<'_, u32> {
        let next = self.reject_rules(&Payload::None);
        self.next_step(next, Payload::None)
    }

    /// [`reject`](Self::reject)'s rules.
    pub(crate) fn reject_rules(&mut self, _: &Payload<'_>) -> Next {
        match self.state {
            State::Decide => {
                self.answer(false);
                Next::Io
            }
            State::Answer if self.byte == Status::GenericError.to_byte() => Next::Io,
            State::Refused => Next::Settle(Ok(self.announced())),
            State::Broken | State::GreetFailed => Next::Done(Err(Error::Broken)),
            _ => Next::Done(Err(Error::InProgress)),
        }
    }

    /// Receives one whole message into `buf`; done with its length.
    ///
    /// A length over `buf.len()` or [`max_message_len`](Self::max_message_len)
    /// is answered 0x00 and done with [`Error::TooLarge`]; the connection
    /// stays usable. [`Error::Closed`] when the peer closed between messages.
    /// Resume a half-received message by calling again with the same buffer.
    pub fn receive<'a>(&'a mut self, buf: &'a mut [u8]) -> Step<'a, usize> {
        self.run(exchange::receive(self, buf))
            .map(|len| len as usize)
    }

    /// Starts receiving a message to be read in chunks with
    /// [`read_chunk`](Self::read_chunk); done with its length once the peer
    /// was answered 0xFF. Lengths over `limit` are answered 0x00 and done
    /// with [`Error::TooLarge`]. Call again to resume a dropped chunked receive.
    pub fn begin_receive(&mut self, limit: u32) -> Step<'_, u32> {
        self.run(exchange::begin_receive(limit))
    }

    /// Reads the next chunk of a message begun with
    /// [`begin_receive`](Self::begin_receive) into `buf`. The [`Io::Read`]
    /// it asks for is the chunk itself (after a flush, perhaps): the bytes
    /// reported are the chunk's size. Done with 0 once the whole message has
    /// been read; it never reads past the message.
    pub fn read_chunk<'a>(&'a mut self, buf: &'a mut [u8]) -> Step<'a, usize> {
        let buf = Payload::In(buf);
        let next = self.read_chunk_rules(&buf);
        self.next_step(next, buf).map(|n| n as usize)
    }

    /// [`read_chunk`](Self::read_chunk)'s rules.
    pub(crate) fn read_chunk_rules(&mut self, buf: &Payload<'_>) -> Next {
        match self.state {
            State::Broken | State::GreetFailed => Next::Done(Err(Error::Broken)),
            State::RecvPayload if self.op.is_chunked() && !buf.is_empty() => Next::Io,
            _ => Next::Done(Ok(0)),
        }
    }

    /// Flushes whatever was written, whatever the [`FlushPolicy`]. It asks
    /// for nothing but [`Io::Flush`].
    pub fn flush(&mut self) -> Step<'_, ()> {
        let next = self.flush_rules(&Payload::None);
        self.next_step(next, Payload::None).map(drop)
    }

    /// [`flush`](Self::flush)'s rules.
    pub(crate) fn flush_rules(&mut self, _: &Payload<'_>) -> Next {
        if self.needs_flush() {
            Next::Flush
        } else {
            Next::Done(Ok(0))
        }
    }

    /// The next step of `op`: exactly what its own method
    /// ([`receive`](Self::receive), [`transmit`](Self::transmit), ...)
    /// returns, done with a length (the message's; 0 for the greeting).
    /// For a superloop that runs several operations: it keeps the one in
    /// flight as an [`Operation`] and makes one call per pass, whichever it is.
    pub fn step<'a>(&'a mut self, op: Operation<'a>) -> Step<'a, u32> {
        let args = match op {
            Operation::Greet => exchange::greet(),
            Operation::Transmit(msg) => exchange::transmit(msg),
            Operation::Receive(buf) => exchange::receive(self, buf),
            Operation::BeginTransmit(len) => exchange::begin_transmit(len),
            Operation::BeginReceive(limit) => exchange::begin_receive(limit),
        };
        self.run(args)
    }

    // ---- the rules the operations share ----

    /// One step of an exchange (see [`exchange`]): the public operations' entry.
    #[inline(always)]
    fn run<'a>(&'a mut self, (op, bound, payload): exchange::Args<'a>) -> Step<'a, u32> {
        self.exchange(op, bound, payload)
    }

    /// The greeting and the four message operations in one (`op` says
    /// which: greet, a whole or chunked send or receive). `bound` is the
    /// send's length, or the most a receive takes. Greets, opens the message
    /// or resumes it, decides a received length (the accept rule), and says
    /// when the operation is over: the greeting once greeted, a whole
    /// message once it has moved, a chunked one once its payload may move.
    /// `payload` is the caller's whole message or buffer.
    pub(crate) fn exchange<'a>(
        &'a mut self,
        op: Op,
        bound: u32,
        payload: Payload<'a>,
    ) -> Step<'a, u32> {
        let next = self.exchange_rules(op, bound, &payload);
        let payload = payload.skip(self.payload_offset());
        self.next_step(next, payload)
    }

    /// [`exchange`](Self::exchange)'s rules.
    #[inline(always)]
    pub(crate) fn exchange_rules(&mut self, op: Op, bound: u32, payload: &Payload<'_>) -> Next {
        let chunked = op.is_chunked();
        match self.open(op, bound) {
            Next::Io => {
                let len = self.announced();
                match self.state {
                    // The accept rule: 0xFF for a length within `bound`, 0x00 otherwise.
                    State::Decide => {
                        self.op = op;
                        self.answer(len <= bound);
                        Next::Io
                    }
                    State::Rejected => Next::Settle(Err(Error::Rejected { len })),
                    State::Refused => Next::Settle(Err(Error::TooLarge {
                        len,
                        capacity: bound,
                    })),
                    // A chunked send is settled by `finish`.
                    State::Sent if chunked => Next::Done(Ok(len)),
                    State::Sent | State::Received => Next::Settle(Ok(len)),
                    State::SendPayload | State::RecvPayload if chunked => Next::Done(Ok(len)),
                    // Only a resume with a smaller buffer than the first call can miss.
                    State::RecvPayload if matches!(payload, Payload::In(buf) if buf.len() < len as usize) => {
                        Next::Done(Err(Error::Misuse(Misuse::ShorterBuffer { len })))
                    }
                    _ => Next::Io,
                }
            }
            next => next,
        }
    }

    /// Where a whole message's payload moves from: the announced length
    /// less what is owed (only a payload state lends the payload; elsewhere
    /// this is no offset, and unused).
    pub(crate) fn payload_offset(&self) -> usize {
        self.announced().wrapping_sub(self.owed) as usize
    }

    /// Lets an exchange go on with the connection: `Next::Io` while the
    /// greeting is due, when the message in flight is this operation's to
    /// resume, or once a new message of its kind started (`len` is a send's
    /// length, checked against the send-length bound). The greeting's
    /// operation ends here once greeted.
    fn open(&mut self, op: Op, len: u32) -> Next {
        let send = op.is_send();
        let resumes = match self.state {
            State::GreetWrite | State::GreetRead => return Next::Io,
            State::Broken | State::GreetFailed => return Next::Done(Err(Error::Broken)),
            // Greeted: the greeting's operation is over once its byte is flushed.
            _ if op == Op::Greet => {
                return if self.flush_due() {
                    Next::Flush
                } else {
                    Next::Done(Ok(0))
                }
            }
            State::SendLength
            | State::SendStatus
            | State::SendPayload
            | State::Sent
            | State::Rejected => self.op == op && self.announced() == len,
            // Nothing is decided yet: any receive may go on with it.
            State::RecvLength | State::Decide => op.is_receive(),
            State::Answer | State::RecvPayload | State::Received | State::Refused => self.op == op,
            State::Idle => false,
        };
        if resumes {
            return Next::Io;
        }
        if !self.is_free() {
            return Next::Done(Err(Error::InProgress));
        }
        // The send-length bound.
        if send && len > MAX_MESSAGE_LEN {
            return Next::Done(Err(Error::TooLarge {
                len,
                capacity: MAX_MESSAGE_LEN,
            }));
        }
        self.state = if send {
            State::SendLength
        } else {
            State::RecvLength
        };
        // A receive's length is read over this one.
        self.length = len.to_be_bytes();
        self.owed = LENGTH_FIELD_LEN as u32;
        self.op = op;
        Next::Io
    }

    /// Our answer to the announced length: 0xFF to take it, 0x00 to refuse.
    fn answer(&mut self, accept: bool) {
        self.state = State::Answer;
        self.byte = if accept {
            Status::Ok
        } else {
            Status::GenericError
        }
        .to_byte();
    }

    /// True when an operation that ends must flush first: bytes wait and
    /// the policy flushes each message.
    fn flush_due(&self) -> bool {
        self.flags & (UNFLUSHED | FLUSH_BEFORE_READ) == UNFLUSHED
    }

    // ---- what moved ----

    /// Reports what the transport did with the [`Io`] the last step asked
    /// for (report nothing for an I/O that failed or was cancelled).
    ///
    /// A report that cannot answer the step the state asks for (a write
    /// where a read is due or the other way round, a read while written
    /// bytes wait for their flush, a flush with nothing to flush, more bytes
    /// than the field owes) is [`Misuse::WrongReport`]: nothing is counted
    /// and the connection stays as it was; call the operation again for a
    /// fresh step. Any other error
    /// here is a protocol error (an unexpected byte, the end of the stream):
    /// the connection is broken and every later operation says
    /// [`Error::Broken`].
    pub fn moved(&mut self, moved: Moved) -> Result<(), Error> {
        let unflushed = self.needs_flush();
        let (n, write) = match moved {
            Moved::Flushed if unflushed => {
                self.flags &= !UNFLUSHED;
                return Ok(());
            }
            Moved::Wrote(n) => (n, true),
            // A read waits for what was written to be flushed.
            Moved::Read(n) if !unflushed => (n, false),
            Moved::Flushed | Moved::Read(_) => return Err(Error::Misuse(Misuse::WrongReport)),
        };
        if self.state.writes() != Some(write) || n > self.owed as usize {
            return Err(Error::Misuse(Misuse::WrongReport));
        }
        if n == 0 {
            return self.fail(self.end_of_stream());
        }
        if write {
            self.flags |= UNFLUSHED;
        }
        self.owed -= n as u32;
        if self.owed == 0 {
            // The next field is the greeting's or a status byte, or a
            // payload (`field_done` counts it); a length field only opens a
            // message, and `open` counts it.
            self.owed = 1;
            self.field_done()?;
        }
        Ok(())
    }

    /// What follows the field that just completed: the greeting and the
    /// sender's status (a peer's byte other than 0xFF goes to
    /// [`refused_by_peer`](Self::refused_by_peer)), where our answer leads,
    /// and the end of a message (at once after the status or answer for an
    /// empty one); a payload that follows owes its announced length. An
    /// error breaks the connection.
    fn field_done(&mut self) -> Result<(), Error> {
        let byte = self.byte;
        let accepted = byte == Status::Ok.to_byte();
        let empty = self.announced() == 0;
        let state = self.state;
        self.state = match state {
            State::GreetRead | State::SendStatus if !accepted => {
                return self.refused_by_peer(byte);
            }
            State::GreetWrite => State::GreetRead,
            State::GreetRead => State::Idle,
            State::SendLength => State::SendStatus,
            State::RecvLength => State::Decide,
            State::SendStatus if empty => State::Sent,
            State::SendStatus => {
                self.owed = self.announced();
                State::SendPayload
            }
            State::Answer if accepted && empty => State::Received,
            State::Answer if accepted => {
                self.owed = self.announced();
                State::RecvPayload
            }
            State::Answer => State::Refused,
            State::SendPayload => State::Sent,
            // A chunked message is over when its reader has had the last byte.
            State::RecvPayload if self.op.is_chunked() => State::Idle,
            _ => State::Received,
        };
        Ok(())
    }

    /// The greeting rule and the sender's status rule for a peer's byte
    /// other than 0xFF: 0xFE a full server, 0x00 a rejection (the connection
    /// goes on), 0x01..=0xF0 the peer's own length (a conflict), the rest
    /// unexpected. Kept apart from [`field_done`](Self::field_done), which
    /// then needs no test of the byte for either field.
    fn refused_by_peer(&mut self, byte: u8) -> Result<(), Error> {
        let state = self.state;
        let greeting = state == State::GreetRead;
        if !greeting && byte == Status::GenericError.to_byte() {
            self.state = State::Rejected;
            return Ok(());
        }
        self.set_broken();
        Err(if greeting && byte == Status::ConnectionLimit.to_byte() {
            Error::ConnectionLimit
        } else if !greeting && byte <= MAX_LENGTH_FIRST_BYTE {
            // Lengths never start above 0xF0: up to it, the peer is sending.
            Error::Conflict
        } else {
            Error::UnexpectedByte {
                phase: state.phase(),
                byte,
            }
        })
    }

    /// Breaks the connection with a protocol error.
    fn fail(&mut self, e: Error) -> Result<(), Error> {
        self.set_broken();
        Err(e)
    }

    /// Puts the connection out of step after a protocol error. Where the
    /// error is worked out after this, a caller that never reads it builds
    /// none of it (an inlined superloop that asks only
    /// [`is_broken`](Self::is_broken)).
    fn set_broken(&mut self) {
        self.state = if self.is_greeted() {
            State::Broken
        } else {
            State::GreetFailed
        };
    }

    /// The error for a stream that ended (or took no more bytes) in the
    /// state's field: [`Error::Closed`] between messages,
    /// [`Error::UnexpectedEof`] inside one.
    fn end_of_stream(&self) -> Error {
        if self.state == State::RecvLength && self.owed == LENGTH_FIELD_LEN as u32 {
            return Error::Closed;
        }
        Error::UnexpectedEof {
            phase: self.state.phase(),
        }
    }

    fn announced(&self) -> u32 {
        u32::from_be_bytes(self.length)
    }

    /// True when a new operation may take the connection: nothing of a
    /// message is half done ("untouched, may be abandoned").
    fn is_free(&self) -> bool {
        match self.state {
            State::GreetWrite
            | State::GreetRead
            | State::GreetFailed
            | State::Idle
            | State::Broken
            | State::Sent
            | State::Rejected => true,
            State::SendLength | State::RecvLength => self.owed == LENGTH_FIELD_LEN as u32,
            State::SendStatus
            | State::SendPayload
            | State::Decide
            | State::Answer
            | State::RecvPayload
            | State::Received
            | State::Refused => false,
        }
    }

    // ---- the one place that turns the state into I/O ----

    /// The result, or the I/O that is due. `payload` is the caller's side
    /// of the message.
    #[inline(always)]
    pub(crate) fn next_step<'a>(&'a mut self, next: Next, payload: Payload<'a>) -> Step<'a, u32> {
        match next {
            Next::Done(result) => Step::Done(result),
            Next::Settle(_) if self.flush_due() => Step::Io(Io::Flush),
            Next::Settle(result) => {
                self.state = State::Idle;
                Step::Done(result)
            }
            Next::Flush => Step::Io(Io::Flush),
            Next::Io => Step::Io(self.io(payload)),
        }
    }

    /// The I/O the state's field moves: the machine's own bytes, or the
    /// caller's payload (from where it stopped), never past the field's end.
    fn io<'a>(&'a mut self, payload: Payload<'a>) -> Io<'a> {
        // No operation's rules ask for I/O where nothing moves; a flush is
        // the one request that cannot move a byte out of turn.
        let Some(write) = self.state.writes() else {
            return Io::Flush;
        };
        // A peer only answers what it has seen: flush before waiting on it.
        if !write && self.needs_flush() {
            return Io::Flush;
        }
        let owed = self.owed as usize;
        let field = match (self.state, payload) {
            (State::SendLength | State::RecvLength, _) => {
                // Where the field stopped: four less what it owes (1 to 4),
                // taken modulo four so that no bounds check is left.
                &mut self.length[owed.wrapping_neg() % LENGTH_FIELD_LEN..]
            }
            (State::SendPayload, Payload::Out(src)) => {
                return Io::Write(src.get(..owed).unwrap_or(src));
            }
            (State::RecvPayload, Payload::In(dest)) => {
                let len = dest.len().min(owed);
                &mut dest[..len]
            }
            // Payload I/O comes only with the payload.
            (State::SendPayload | State::RecvPayload, _) => return Io::Flush,
            _ => core::slice::from_mut(&mut self.byte),
        };
        if write {
            Io::Write(field)
        } else {
            Io::Read(field)
        }
    }
}

/// What the greeting and each message operation ask of
/// [`Machine::exchange`]: the operation, its bound (a send's length, the
/// most a receive takes) and the caller's side of the payload. Written once
/// here, for the public operations and for the drivers, which run all of
/// them in one loop (one copy in a firmware). Each is a plain triple, taken
/// apart by its caller: the loop then gets its arguments in registers.
pub(crate) mod exchange {
    use super::{len_of, Machine, Op, Payload, MAX_MESSAGE_LEN};

    /// The arguments of [`Machine::exchange`].
    pub(crate) type Args<'a> = (Op, u32, Payload<'a>);

    /// See [`Machine::greet`].
    #[inline]
    pub(crate) fn greet<'a>() -> Args<'a> {
        (Op::Greet, 0, Payload::None)
    }

    /// See [`Machine::transmit`].
    #[inline]
    pub(crate) fn transmit(msg: &[u8]) -> Args<'_> {
        (Op::Send, len_of(msg.len()), Payload::Out(msg))
    }

    /// See [`Machine::begin_transmit`].
    #[inline]
    pub(crate) fn begin_transmit<'a>(len: u32) -> Args<'a> {
        (Op::SendChunks, len, Payload::None)
    }

    /// See [`Machine::receive`]: the buffer, capped by the machine's
    /// [`max_message_len`](Machine::max_message_len).
    #[inline]
    pub(crate) fn receive<'a>(machine: &Machine, buf: &'a mut [u8]) -> Args<'a> {
        (
            Op::Receive,
            machine.whole_capacity(buf.len()),
            Payload::In(buf),
        )
    }

    /// See [`Machine::begin_receive`].
    #[inline]
    pub(crate) fn begin_receive<'a>(limit: u32) -> Args<'a> {
        (Op::ReceiveChunks, limit.min(MAX_MESSAGE_LEN), Payload::None)
    }
}

/// The operation an exchange serves: the greeting, or a whole or chunked
/// send or receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub(crate) enum Op {
    Greet = 0,
    Send = 1,
    Receive = 2,
    SendChunks = 1 | CHUNKS,
    ReceiveChunks = 2 | CHUNKS,
}

/// The bit of an [`Op`] that says it moves its payload in chunks.
const CHUNKS: u8 = 4;

impl Op {
    fn is_send(self) -> bool {
        self as u8 & Op::Send as u8 != 0
    }

    fn is_receive(self) -> bool {
        self as u8 & Op::Receive as u8 != 0
    }

    fn is_chunked(self) -> bool {
        self as u8 & CHUNKS != 0
    }
}

/// The caller's side of a payload: a whole message or buffer, or a chunk.
pub(crate) enum Payload<'a> {
    None,
    Out(&'a [u8]),
    In(&'a mut [u8]),
}

impl Payload<'_> {
    /// The same payload, lent for one step of a loop.
    pub(crate) fn reborrow(&mut self) -> Payload<'_> {
        match self {
            Payload::None => Payload::None,
            Payload::Out(bytes) => Payload::Out(bytes),
            Payload::In(buf) => Payload::In(buf),
        }
    }

    /// True for no payload or an empty one.
    fn is_empty(&self) -> bool {
        match self {
            Payload::None => true,
            Payload::Out(bytes) => bytes.is_empty(),
            Payload::In(buf) => buf.is_empty(),
        }
    }

    /// The payload from byte `n` on (empty if it is shorter).
    pub(crate) fn skip(self, n: usize) -> Self {
        match self {
            Payload::None => Payload::None,
            Payload::Out(bytes) => Payload::Out(bytes.get(n..).unwrap_or_default()),
            Payload::In(buf) => Payload::In(buf.get_mut(n..).unwrap_or_default()),
        }
    }
}

/// A slice length as a wire length; lengths beyond `u32` saturate (and are
/// over [`MAX_MESSAGE_LEN`] either way).
#[inline]
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
        ($machine:ident . $op:ident ( $($arg:expr),* ), $peer:expr) => {{
            let peer = &mut $peer;
            loop {
                match $machine.$op($($arg),*) {
                    Step::Io(io) => {
                        let moved = peer.perform(io);
                        if let Err(e) = $machine.moved(moved) {
                            break Err(e);
                        }
                    }
                    Step::Done(result) => break result,
                }
            }
        }};
    }

    #[test]
    fn test_send_greeting_writes_and_flushes_our_byte_only() {
        let mut m = Machine::new();
        assert_eq!(m.send_greeting(), Step::Io(Io::Write(&[GREETING])));
        assert_eq!(m.moved(Moved::Wrote(1)), Ok(()));
        assert_eq!(m.send_greeting(), Step::Io(Io::Flush));
        assert_eq!(m.moved(Moved::Flushed), Ok(()));
        assert_eq!(m.send_greeting(), Step::Done(Ok(())));
        assert!(!m.is_greeted(), "the peer's byte is still to come");
        assert!(matches!(m.greet(), Step::Io(Io::Read(b)) if b.len() == 1));
        assert_eq!(m.moved(Moved::Read(1)), Ok(()));
        assert_eq!(m.greet(), Step::Done(Ok(())));
        assert_eq!(
            m.send_greeting(),
            Step::Done(Ok(())),
            "greeted: nothing to send"
        );
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
        let mut peer = Peer::new(&[0xFF, 0xF5]);
        assert_eq!(
            run!(m.transmit(b"hello"), peer),
            Err(Error::UnexpectedByte {
                phase: Phase::Status,
                byte: 0xF5
            })
        );
        assert_eq!(peer.output, [0xFF, 0, 0, 0, 5]);
        assert!(m.is_broken());
        // The start of the peer's own length: a conflict, and no payload either.
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF, 0x42]);
        assert_eq!(run!(m.transmit(b"hello"), peer), Err(Error::Conflict));
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

    /// Asks `machine` for the step of `op` and expects it to be this I/O.
    macro_rules! expect_io {
        ($machine:ident . $op:ident ( $($arg:expr),* ), $pattern:pat) => {
            match $machine.$op($($arg),*) {
                Step::Io($pattern) => {}
                other => panic!("expected {}, got {other:?}", stringify!($pattern)),
            }
        };
    }

    /// A machine past the greeting.
    fn greeted() -> Machine {
        let mut m = Machine::new();
        assert_eq!(run!(m.greet(), Peer::new(&[0xFF])), Ok(()));
        m
    }

    // ---- the greeting rule ----

    #[test]
    fn test_greeting_writes_then_reads_then_is_done() {
        let mut m = Machine::new();
        expect_io!(m.greet(), Io::Write(&[0xFF]));
        // A transport that took nothing yet reports nothing: the same byte is asked again.
        expect_io!(m.greet(), Io::Write(&[0xFF]));
        m.moved(Moved::Wrote(1)).unwrap();
        expect_io!(m.greet(), Io::Flush);
        m.moved(Moved::Flushed).unwrap();
        assert!(!m.is_greeted());
        match m.greet() {
            Step::Io(Io::Read(buf)) => {
                assert_eq!(buf.len(), 1);
                buf[0] = 0xFF;
            }
            other => panic!("{other:?}"),
        }
        m.moved(Moved::Read(1)).unwrap();
        assert_eq!(m.greet(), Step::Done(Ok(())));
        assert!(m.is_greeted());
    }

    #[test]
    fn test_greeting_connection_limit_and_other_bytes() {
        let mut m = Machine::new();
        assert_eq!(
            run!(m.greet(), Peer::new(&[0xFE])),
            Err(Error::ConnectionLimit)
        );
        assert!(!m.is_greeted() && m.is_broken());
        for byte in [0x00, 0x01, 0xFD, 0x7F] {
            let mut m = Machine::new();
            let input = [byte];
            assert_eq!(
                run!(m.greet(), Peer::new(&input)),
                Err(Error::UnexpectedByte {
                    phase: Phase::Greeting,
                    byte
                })
            );
            assert!(m.is_broken());
        }
    }

    #[test]
    fn test_greeting_ours_first_whatever_the_peer_sent() {
        // The peer's byte may be waiting already: ours is still written first.
        let mut m = Machine::new();
        let mut peer = Peer::new(&[0xFF]);
        assert_eq!(run!(m.greet(), peer), Ok(()));
        assert_eq!(peer.log, ["write", "flush", "read"]);
        let mut m = Machine::new();
        assert_eq!(
            run!(m.greet(), Peer::new(&[])),
            Err(Error::UnexpectedEof {
                phase: Phase::Greeting
            })
        );
    }

    #[test]
    fn test_second_greeting_byte_is_a_length_over_the_limit() {
        // After the greeting a 0xFF can only open a length, and no length
        // starts with 0xFF: it is refused like any other oversize one.
        let mut m = greeted();
        let mut peer = Peer::new(&[0xFF, 0, 0, 0]);
        let mut buf = [0u8; 8];
        assert_eq!(
            run!(m.receive(&mut buf), peer),
            Err(Error::TooLarge {
                len: 0xFF00_0000,
                capacity: 8
            })
        );
        assert_eq!(peer.output, [0x00]);
    }

    // ---- the send side: length bound, status rule, payload ----

    #[test]
    fn test_length_is_big_endian_and_resumable() {
        let mut m = greeted();
        expect_io!(m.begin_transmit(0x0102_0304), Io::Write(&[1, 2, 3, 4]));
        m.moved(Moved::Wrote(1)).unwrap();
        expect_io!(m.begin_transmit(0x0102_0304), Io::Write(&[2, 3, 4]));
        expect_io!(m.begin_transmit(0x0102_0304), Io::Write(&[2, 3, 4]));
        m.moved(Moved::Wrote(2)).unwrap();
        expect_io!(m.begin_transmit(0x0102_0304), Io::Write(&[4]));
        assert!(m.is_in_progress());
        m.moved(Moved::Wrote(1)).unwrap();
        expect_io!(m.begin_transmit(0x0102_0304), Io::Flush);
        m.moved(Moved::Flushed).unwrap();
        expect_io!(m.begin_transmit(0x0102_0304), Io::Read(_));
    }

    #[test]
    fn test_report_over_the_field_is_misuse_and_counts_nothing() {
        let mut m = greeted();
        expect_io!(m.transmit(b"1234567"), Io::Write(&[0, 0, 0, 7]));
        assert_eq!(
            m.moved(Moved::Wrote(5)),
            Err(Error::Misuse(Misuse::WrongReport))
        );
        assert!(!m.is_broken());
        expect_io!(m.transmit(b"1234567"), Io::Write(&[0, 0, 0, 7]));
        m.moved(Moved::Wrote(usize::MAX)).unwrap_err();
        expect_io!(m.transmit(b"1234567"), Io::Write(&[0, 0, 0, 7]));
        m.moved(Moved::Wrote(4)).unwrap();
        expect_io!(m.transmit(b"1234567"), Io::Flush);
    }

    #[test]
    fn test_report_of_another_kind_is_misuse_and_counts_nothing() {
        let mut m = greeted();
        // A status read reported while the length is still being written.
        expect_io!(m.transmit(b"hello"), Io::Write(&[0, 0, 0, 5]));
        assert_eq!(
            m.moved(Moved::Read(1)),
            Err(Error::Misuse(Misuse::WrongReport))
        );
        assert_eq!(
            m.moved(Moved::Flushed),
            Err(Error::Misuse(Misuse::WrongReport)),
            "nothing written yet, nothing to flush"
        );
        expect_io!(m.transmit(b"hello"), Io::Write(&[0, 0, 0, 5]));
        m.moved(Moved::Wrote(4)).unwrap();
        // The length waits for its flush: a read now is not what was asked.
        expect_io!(m.transmit(b"hello"), Io::Flush);
        assert_eq!(
            m.moved(Moved::Read(1)),
            Err(Error::Misuse(Misuse::WrongReport))
        );
        assert_eq!(
            m.moved(Moved::Wrote(1)),
            Err(Error::Misuse(Misuse::WrongReport)),
            "a write where a read is due"
        );
        m.moved(Moved::Flushed).unwrap();
        expect_io!(m.transmit(b"hello"), Io::Read(_));
        assert!(!m.is_broken());
        // The end of the stream is still the end of the stream.
        let mut m = greeted();
        expect_io!(m.transmit(b"hello"), Io::Write(_));
        m.moved(Moved::Wrote(2)).unwrap();
        expect_io!(m.transmit(b"hello"), Io::Write(&[0, 5]));
        assert_eq!(
            m.moved(Moved::Wrote(0)),
            Err(Error::UnexpectedEof {
                phase: Phase::Length
            })
        );
        // Nothing moves in a state that is done moving.
        let mut m = greeted();
        assert_eq!(m.flush(), Step::Done(Ok(())));
        for wrong in [Moved::Flushed, Moved::Read(1), Moved::Wrote(1)] {
            assert_eq!(m.moved(wrong), Err(Error::Misuse(Misuse::WrongReport)));
        }
    }

    #[test]
    fn test_status_ok_then_payload_chunk_by_chunk() {
        let mut m = greeted();
        let mut peer = Peer::new(&[0xFF]);
        assert_eq!(run!(m.begin_transmit(3), peer), Ok(()));
        for (i, remaining) in [3u32, 2, 1].into_iter().enumerate() {
            assert_eq!(m.remaining(), remaining);
            match m.write_chunk(&b"abc"[i..]) {
                Step::Io(Io::Write(bytes)) => assert_eq!(bytes, &b"abc"[i..]),
                other => panic!("{other:?}"),
            }
            m.moved(Moved::Wrote(1)).unwrap();
        }
        assert_eq!(
            m.write_chunk(b"x"),
            Step::Done(Err(Error::Misuse(Misuse::PastEnd))),
            "nothing is written after the end"
        );
        assert_eq!(run!(m.finish(), peer), Ok(()));
    }

    #[test]
    fn test_empty_message_is_sent_after_status() {
        let mut m = greeted();
        let mut peer = Peer::new(&[0xFF]);
        assert_eq!(run!(m.transmit(b""), peer), Ok(()));
        assert_eq!(peer.output, [0, 0, 0, 0]);
        assert!(!m.is_in_progress());
    }

    #[test]
    fn test_status_bytes_other_than_accept_and_reject_break() {
        // Every byte where the answer to our length is due.
        for byte in 0..=255u8 {
            let mut m = greeted();
            let input = [byte, 0xFF];
            let mut peer = Peer::new(&input);
            let result = run!(m.transmit(b"0123456789"), peer);
            let expected = match byte {
                0xFF => Ok(()),
                0x00 => Err(Error::Rejected { len: 10 }),
                0x01..=0xF0 => Err(Error::Conflict),
                _ => Err(Error::UnexpectedByte {
                    phase: Phase::Status,
                    byte,
                }),
            };
            assert_eq!(result, expected, "status 0x{byte:02x}");
            assert_eq!(m.is_broken(), byte != 0xFF && byte != 0x00, "0x{byte:02x}");
            let payload_sent = peer.output.len() > 4;
            assert_eq!(payload_sent, byte == 0xFF, "payload only after 0xFF");
        }
    }

    #[test]
    fn test_send_length_boundaries() {
        let mut m = greeted();
        assert_eq!(run!(m.begin_transmit(0), Peer::new(&[0xFF])), Ok(()));
        assert_eq!(run!(m.finish(), Peer::new(&[])), Ok(()));
        let mut peer = Peer::new(&[0xFF]);
        assert_eq!(run!(m.begin_transmit(MAX_MESSAGE_LEN), peer), Ok(()));
        assert_eq!(peer.output, MAX_MESSAGE_LEN.to_be_bytes());
        assert_eq!(m.remaining(), MAX_MESSAGE_LEN);
        for over in [MAX_MESSAGE_LEN + 1, u32::MAX] {
            let mut m = greeted();
            assert_eq!(
                m.begin_transmit(over),
                Step::Done(Err(Error::TooLarge {
                    len: over,
                    capacity: MAX_MESSAGE_LEN
                }))
            );
            assert!(!m.is_in_progress());
        }
    }

    #[test]
    fn test_send_end_of_stream_phases() {
        let cases: [(&[u8], usize, Phase); 3] = [
            (&[], 0, Phase::Length),
            (&[], 4, Phase::Status),
            (&[0xFF], 5, Phase::Payload),
        ];
        for (input, written, phase) in cases {
            let mut m = greeted();
            let mut peer = Peer::new(input);
            // The transport takes `written` bytes, then no more.
            let result = loop {
                match m.transmit(b"ab") {
                    Step::Io(Io::Write(bytes)) => {
                        let n = bytes.len().min(written - peer.output.len());
                        peer.output.extend_from_slice(&bytes[..n]);
                        if let Err(e) = m.moved(Moved::Wrote(n)) {
                            break Err(e);
                        }
                    }
                    Step::Io(io) => {
                        let moved = peer.perform(io);
                        if let Err(e) = m.moved(moved) {
                            break Err(e);
                        }
                    }
                    Step::Done(r) => break r,
                }
            };
            assert_eq!(result, Err(Error::UnexpectedEof { phase }), "{written}");
        }
    }

    // ---- the receive side: length, accept rule, payload ----

    #[test]
    fn test_length_byte_by_byte() {
        let mut m = greeted();
        let mut peer = Peer::new(&[]);
        assert_eq!(run!(m.next_length(), peer), Err(Error::Closed));
        for upto in 1..4 {
            let input = [0x00, 0x01, 0x02, 0x03];
            let mut m = greeted();
            let mut peer = Peer::new(&input[..upto]);
            peer.chunk = 1;
            assert_eq!(
                run!(m.next_length(), peer),
                Err(Error::UnexpectedEof {
                    phase: Phase::Length
                })
            );
        }
        let mut m = greeted();
        let mut peer = Peer::new(&[0x00, 0x01, 0x02, 0x03]);
        peer.chunk = 1;
        assert_eq!(run!(m.next_length(), peer), Ok(0x0001_0203));
    }

    #[test]
    fn test_length_read_asks_for_the_field_only() {
        let mut m = greeted();
        let mut buf = [0u8; 64];
        match m.receive(&mut buf) {
            Step::Io(Io::Read(dest)) => {
                assert_eq!(dest.len(), 4);
                dest[..2].copy_from_slice(&[0, 0]);
            }
            other => panic!("{other:?}"),
        }
        m.moved(Moved::Read(2)).unwrap();
        match m.receive(&mut buf) {
            Step::Io(Io::Read(dest)) => assert_eq!(dest.len(), 2, "the rest of the length"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_accept_then_payload_then_delivered() {
        let mut m = greeted();
        let mut peer = Peer::new(&[0, 0, 0, 3]);
        assert_eq!(run!(m.next_length(), peer), Ok(3));
        let mut buf = [0u8; 3];
        match m.receive(&mut buf) {
            Step::Io(Io::Write(status)) => assert_eq!(status, [0xFF]),
            other => panic!("{other:?}"),
        }
        m.moved(Moved::Wrote(1)).unwrap();
        expect_io!(m.receive(&mut buf), Io::Flush);
        m.moved(Moved::Flushed).unwrap();
        match m.receive(&mut buf) {
            Step::Io(Io::Read(dest)) => {
                assert_eq!(dest.len(), 3);
                dest[..2].copy_from_slice(b"ab");
            }
            other => panic!("{other:?}"),
        }
        m.moved(Moved::Read(2)).unwrap();
        assert_eq!(m.remaining(), 1);
        expect_io!(m.receive(&mut buf), Io::Read(_));
        assert_eq!(
            m.moved(Moved::Read(9)),
            Err(Error::Misuse(Misuse::WrongReport)),
            "more than the payload owes"
        );
        let mut peer = Peer::new(b"c");
        assert_eq!(run!(m.receive(&mut buf), peer), Ok(3));
        assert_eq!(&buf, b"abc");
        // The end of the stream inside a payload.
        let mut m = greeted();
        assert_eq!(
            run!(m.receive(&mut buf), Peer::new(&[0, 0, 0, 3, b'a'])),
            Err(Error::UnexpectedEof {
                phase: Phase::Payload
            })
        );
    }

    #[test]
    fn test_empty_message_is_delivered_after_status() {
        let mut m = greeted();
        let mut peer = Peer::new(&[0, 0, 0, 0]);
        assert_eq!(run!(m.receive(&mut []), peer), Ok(0));
        assert_eq!(peer.output, [0xFF]);
    }

    #[test]
    fn test_reject_then_refused() {
        let mut m = greeted();
        let mut peer = Peer::new(&[0, 0, 0, 10]);
        assert_eq!(run!(m.next_length(), peer), Ok(10));
        expect_io!(m.reject(), Io::Write(&[0x00]));
        assert_eq!(
            m.moved(Moved::Wrote(0)),
            Err(Error::UnexpectedEof {
                phase: Phase::Status
            })
        );
        let mut m = greeted();
        let mut peer = Peer::new(&[0, 0, 0, 10]);
        assert_eq!(run!(m.next_length(), peer), Ok(10));
        assert_eq!(run!(m.reject(), peer), Ok(10));
        assert_eq!(peer.output, [0x00]);
        assert!(!m.is_in_progress() && !m.is_broken());
    }

    /// The accept rule's boundary table: a length against a limit.
    #[test]
    fn test_accept_rule_boundaries() {
        let cases: [(u32, u32, bool); 9] = [
            (0, 16, true),
            (1, 16, true),
            (16, 16, true),
            (17, 16, false),
            (MAX_MESSAGE_LEN, u32::MAX, true),
            (MAX_MESSAGE_LEN, MAX_MESSAGE_LEN, true),
            (MAX_MESSAGE_LEN, MAX_MESSAGE_LEN - 1, false),
            (MAX_MESSAGE_LEN + 1, u32::MAX, false),
            (0xFFFF_FFFF, u32::MAX, false),
        ];
        for (len, limit, accepted) in cases {
            let mut m = greeted();
            let input = len.to_be_bytes();
            let mut peer = Peer::new(&input);
            let result = run!(m.begin_receive(limit), peer);
            let status = if accepted { 0xFF } else { 0x00 };
            assert_eq!(peer.output, [status], "len {len} limit {limit}");
            if !accepted {
                assert_eq!(
                    result,
                    Err(Error::TooLarge {
                        len,
                        capacity: limit.min(MAX_MESSAGE_LEN)
                    })
                );
            }
        }
    }

    #[test]
    fn test_calls_out_of_turn_move_nothing() {
        let mut m = greeted();
        assert_eq!(m.reject(), Step::Done(Err(Error::InProgress)));
        assert_eq!(m.finish(), Step::Done(Ok(())));
        assert_eq!(m.read_chunk(&mut [0; 4]), Step::Done(Ok(0)));
        let mut buf = [0u8; 4];
        expect_io!(m.receive(&mut buf), Io::Read(_));
        assert!(!m.is_in_progress());
        // Half a length in: other operations must wait for it.
        match m.next_length() {
            Step::Io(Io::Read(dest)) => dest[..2].copy_from_slice(&[0, 0]),
            other => panic!("{other:?}"),
        }
        m.moved(Moved::Read(2)).unwrap();
        assert!(m.is_in_progress());
        assert_eq!(m.transmit(b"x"), Step::Done(Err(Error::InProgress)));
        assert_eq!(m.begin_transmit(1), Step::Done(Err(Error::InProgress)));
        assert_eq!(m.reject(), Step::Done(Err(Error::InProgress)));
    }

    #[test]
    fn test_flush_asks_only_for_a_flush() {
        let mut m = greeted();
        // Half a length written: a flush must not write the rest of it.
        expect_io!(m.transmit(b"hello"), Io::Write(_));
        m.moved(Moved::Wrote(2)).unwrap();
        assert_eq!(m.flush(), Step::Io(Io::Flush));
        m.moved(Moved::Flushed).unwrap();
        assert_eq!(m.flush(), Step::Done(Ok(())));
        expect_io!(m.transmit(b"hello"), Io::Write(&[0, 5]));
    }

    #[test]
    fn test_break_off_ends_the_connection_for_every_operation() {
        let mut m = greeted();
        m.break_off();
        assert!(m.is_broken());
        assert_eq!(m.transmit(b"x"), Step::Done(Err(Error::Broken)));
        assert_eq!(m.receive(&mut [0; 4]), Step::Done(Err(Error::Broken)));
        assert_eq!(m.next_length(), Step::Done(Err(Error::Broken)));
        assert_eq!(m.greet(), Step::Done(Err(Error::Broken)));
    }

    /// `step` runs each operation exactly as its own method does: the same
    /// I/O in the same order, the same result, the same state after.
    #[test]
    fn test_step_is_each_operations_method() {
        // The peer greets, sends "abc", takes our two-byte message, refuses
        // the next, sends a nine-byte one (over our buffer), takes a chunked
        // message of two bytes, then sends one of two bytes for a chunked
        // receive.
        let input = [
            0xFF, 0, 0, 0, 3, b'a', b'b', b'c', 0xFF, 0x00, 0, 0, 0, 9, 0xFF, 0, 0, 0, 2,
        ];
        let (mut by_method, mut method_peer, mut method_buf) =
            (Machine::new(), Peer::new(&input), [0u8; 8]);
        let (mut by_step, mut step_peer, mut step_buf) =
            (Machine::new(), Peer::new(&input), [0u8; 8]);
        method_peer.chunk = 1;
        step_peer.chunk = 1;
        macro_rules! both {
            ($method:ident ( $($arg:expr),* ), $op:expr, $expected:expr) => {{
                let by_its_method = run!(by_method.$method($($arg),*), method_peer);
                let stepped = run!(by_step.step($op), step_peer);
                let what = stringify!($method);
                assert_eq!(stepped, $expected, "{what}");
                assert_eq!(by_its_method.map(|_| ()), stepped.map(|_| ()), "{what}");
                assert_eq!(by_method, by_step, "{what}");
                assert_eq!(method_peer.log, step_peer.log, "{what}");
                assert_eq!(method_peer.output, step_peer.output, "{what}");
            }};
        }
        both!(greet(), Operation::Greet, Ok(0));
        both!(
            receive(&mut method_buf),
            Operation::Receive(&mut step_buf),
            Ok(3)
        );
        assert_eq!(&step_buf[..3], b"abc");
        both!(transmit(b"hi"), Operation::Transmit(b"hi"), Ok(2));
        both!(
            transmit(b"no"),
            Operation::Transmit(b"no"),
            Err(Error::Rejected { len: 2 })
        );
        both!(
            receive(&mut method_buf),
            Operation::Receive(&mut step_buf),
            Err(Error::TooLarge {
                len: 9,
                capacity: 8
            })
        );
        both!(begin_transmit(2), Operation::BeginTransmit(2), Ok(2));
        assert_eq!(by_step.remaining(), 2);
        for (m, peer) in [
            (&mut by_method, &mut method_peer),
            (&mut by_step, &mut step_peer),
        ] {
            for chunk in [&b"ok"[..], b"k"] {
                expect_io!(m.write_chunk(chunk), Io::Write(_));
                m.moved(Moved::Wrote(1)).unwrap();
            }
            assert_eq!(run!(m.finish(), *peer), Ok(()));
        }
        both!(begin_receive(2), Operation::BeginReceive(2), Ok(2));
        assert!(by_step.is_in_progress());
        assert_eq!(by_step.remaining(), 2);
    }

    /// Does the I/O a step asks for and reports it, honestly (`how` below
    /// 8, at most three bytes a call) or wrongly (a flush, a read or a
    /// write of `how` bytes, whatever was asked); `None` once the call is
    /// done.
    fn report<R>(step: Step<'_, R>, input: &mut &[u8], how: u8) -> Result<Option<Moved>, Error> {
        let moved = match (step, how.saturating_sub(7)) {
            (Step::Done(result), _) => return result.map(|_| None),
            (Step::Io(Io::Write(bytes)), 0) => Moved::Wrote(bytes.len().min(3)),
            (Step::Io(Io::Read(buf)), 0) => {
                let n = buf.len().min(input.len()).min(3);
                buf[..n].copy_from_slice(&input[..n]);
                *input = &input[n..];
                Moved::Read(n)
            }
            (Step::Io(Io::Flush), 0) => Moved::Flushed,
            (_, 1) => Moved::Flushed,
            (_, 2 | 3) => Moved::Read(usize::from(how % 8)),
            _ => Moved::Wrote(usize::from(how % 8)),
        };
        Ok(Some(moved))
    }

    proptest::proptest! {
        /// Any call, reported honestly or not, against any peer: an error
        /// from a machine that was not broken is recoverable exactly when
        /// the machine is not broken after it (so a superloop may ask the
        /// machine instead of the error, as the footprint's does).
        #[test]
        fn prop_an_error_is_recoverable_exactly_when_not_broken(
            calls in proptest::collection::vec((0u8..12, proptest::prelude::any::<u8>(), 0u8..12), 0..24),
            greeting in proptest::prop_oneof![
                3 => proptest::strategy::Just(0xFFu8),
                1 => proptest::prelude::any::<u8>(),
            ],
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(0xFFu8),
                    proptest::strategy::Just(0u8),
                    0u8..4,
                    proptest::prelude::any::<u8>(),
                ],
                0..48,
            ),
        ) {
            let mut m = Machine::new();
            let input = [&[greeting][..], &input].concat();
            let mut input = &input[..];
            let mut buf = [0u8; 8];
            let msg = *b"hello";
            for (call, arg, how) in calls {
                if m.is_broken() {
                    break;
                }
                let small = usize::from(arg % 8);
                let len = if arg == 0xFF { MAX_MESSAGE_LEN + 1 } else { u32::from(arg % 6) };
                let input = &mut input;
                // The call again while it asks for I/O, a few steps at most.
                for _ in 0..8 {
                let outcome = match call {
                    0 => report(m.greet(), input, how),
                    1 => report(m.send_greeting(), input, how),
                    2 => report(m.step(Operation::Transmit(&msg[..small.min(5)])), input, how),
                    3 => report(m.step(Operation::Receive(&mut buf[..small])), input, how),
                    4 => report(m.begin_transmit(len), input, how),
                    5 => report(m.begin_receive(len), input, how),
                    6 => report(m.write_chunk(&msg[..small.min(5)]), input, how),
                    7 => report(m.read_chunk(&mut buf[..small]), input, how),
                    8 => report(m.finish(), input, how),
                    9 => report(m.next_length(), input, how),
                    10 => report(m.reject(), input, how),
                    _ => report(m.flush(), input, how),
                };
                let result = match outcome {
                    Ok(Some(moved)) => m.moved(moved),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                match result {
                    Err(e) => {
                        proptest::prop_assert_eq!(e.is_recoverable(), !m.is_broken(), "{:?}", e);
                        break;
                    }
                    Ok(()) if m.is_broken() => break,
                    Ok(()) => {}
                }
                }
            }
        }
    }

    #[test]
    fn test_size() {
        assert_eq!(core::mem::size_of::<Machine>(), 16);
    }
}
