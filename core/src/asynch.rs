//! Async driver: a [`Connection`] over any `embedded_io_async::{Read, Write}`
//! transport (an embassy-net `TcpSocket`, a UART, an in-memory pipe).
//!
//! The driver is a thin loop around the sans-IO machines; the blocking driver
//! in [`crate::blocking`] runs this very code to completion.
//!
//! # Cancellation and resumption
//! Every machine advances only by bytes that actually moved, and its state
//! lives in the [`Connection`], not in the future. So when a call stops half
//! way — its future is dropped (`select`, `with_timeout`), or the transport
//! returns an error such as `WouldBlock` or `TimedOut` — the connection stays
//! in step and the message is **resumable**:
//! - [`Connection::transmit`]: call it again with the *same* message; it
//!   carries on where the bytes stopped (no byte is sent twice).
//! - [`Connection::receive`]: call it again with the *same* buffer; the bytes
//!   already read stay in it. Nothing is delivered until the whole message is in.
//! - [`Connection::begin_receive`] / [`Connection::begin_transmit`] (and their
//!   readers/writers, even if dropped): call the same `begin_*` again to get
//!   the message back where it stopped.
//! - Any *other* operation while a message is half done fails with
//!   [`Error::InProgress`] and changes nothing. Waiting for a message that has
//!   not started (no byte read yet) is not "half done": it may be abandoned
//!   freely, which is what a `select` against a timer usually does.
//!
//! A protocol error (unexpected byte, end of stream mid-message) leaves the
//! connection out of step; every later call then fails with [`Error::Broken`].

use embedded_io_async::{ErrorType, Read, Write};

use crate::error::Error;
use crate::greeting::{Greeting, GreetingStep, CONNECTION_LIMIT_REFUSAL};
use crate::receive::{Receiver, RecvStep};
use crate::send::{SendStep, Sender};
use crate::wire::MAX_MESSAGE_LEN;

/// The message in flight, if any.
#[derive(Debug, Clone, Copy)]
enum Op {
    Idle,
    Send { tx: Sender, chunked: bool },
    Receive { rx: Receiver, chunked: bool },
}

/// Everything of a connection but its transport, so both borrow apart.
#[derive(Debug)]
struct State {
    greeting: Greeting,
    op: Op,
    max_message_len: u32,
    /// Bytes were written since the last flush: flush before waiting to read.
    needs_flush: bool,
    broken: bool,
}

/// A tinyproto connection over an async transport.
///
/// ```no_run
/// # async fn demo<S: embedded_io_async::Read + embedded_io_async::Write>(socket: S)
/// # -> Result<(), tinyproto::Error<S::Error>> {
/// let mut conn = tinyproto::asynch::Connection::new(socket);
/// conn.greet().await?;
/// conn.transmit(b"hello").await?;
/// let mut buf = [0u8; 256];
/// let reply = conn.receive(&mut buf).await?;
/// # let _ = reply; Ok(()) }
/// ```
#[derive(Debug)]
pub struct Connection<T> {
    io: T,
    state: State,
}

impl<T> Connection<T> {
    /// Wraps a connected transport. Nothing is sent until the first call.
    pub fn new(io: T) -> Self {
        Self {
            io,
            state: State {
                greeting: Greeting::new(),
                op: Op::Idle,
                max_message_len: MAX_MESSAGE_LEN,
                needs_flush: false,
                broken: false,
            },
        }
    }

    /// Caps the length of messages this side accepts, below the buffer
    /// given to each receive (longer ones are answered 0x00).
    pub fn set_max_message_len(&mut self, len: u32) {
        self.state.max_message_len = len.min(MAX_MESSAGE_LEN);
    }

    /// The cap set by [`set_max_message_len`](Self::set_max_message_len)
    /// ([`MAX_MESSAGE_LEN`] by default).
    pub fn max_message_len(&self) -> u32 {
        self.state.max_message_len
    }

    /// True once both greeting bytes have crossed.
    pub fn is_greeted(&self) -> bool {
        self.state.greeting.is_done()
    }

    /// True after a protocol error: the connection carries nothing more.
    pub fn is_broken(&self) -> bool {
        self.state.broken
    }

    /// True while a message is half sent or half received.
    pub fn is_in_progress(&self) -> bool {
        !self.state.op_is_replaceable()
    }

    /// The transport.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The transport, mutably. Moving bytes through it directly puts the
    /// connection out of step.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// Gives the transport back.
    pub fn into_inner(self) -> T {
        self.io
    }
}

impl State {
    fn usable<E>(&self) -> Result<(), Error<E>> {
        if self.broken {
            Err(Error::Broken)
        } else {
            Ok(())
        }
    }

    /// Turns a protocol error into the caller's error type, marking the
    /// connection broken when the error leaves it out of step.
    fn fail<E>(&mut self, e: Error) -> Error<E> {
        if !e.is_recoverable() {
            self.broken = true;
            self.op = Op::Idle;
        }
        e.into_io()
    }

    /// True when the message slot may be taken by a new operation.
    fn op_is_replaceable(&self) -> bool {
        match &self.op {
            Op::Idle => true,
            Op::Send { tx, .. } => tx.is_untouched() || tx.is_finished(),
            Op::Receive { rx, .. } => rx.is_untouched(),
        }
    }

    /// Resumes the send of a message of `len` bytes, or starts one.
    fn start_send<E>(&mut self, len: usize, chunked: bool) -> Result<(), Error<E>> {
        self.usable()?;
        if let Op::Send { tx, chunked: c } = &self.op {
            if *c == chunked && tx.len() as usize == len {
                return Ok(());
            }
        }
        if !self.op_is_replaceable() {
            return Err(Error::InProgress);
        }
        let tx = Sender::new(len).map_err(Error::into_io)?;
        self.op = Op::Send { tx, chunked };
        Ok(())
    }

    /// Resumes a receive of the same kind, or starts one.
    fn start_receive<E>(&mut self, chunked: bool) -> Result<(), Error<E>> {
        self.usable()?;
        if let Op::Receive { chunked: c, .. } = &self.op {
            if *c == chunked {
                return Ok(());
            }
        }
        if !self.op_is_replaceable() {
            return Err(Error::InProgress);
        }
        self.op = Op::Receive {
            rx: Receiver::new(),
            chunked,
        };
        Ok(())
    }
}

/// Flushes what was written since the last flush, if anything.
async fn flush_pending<T: Write>(io: &mut T, needs_flush: &mut bool) -> Result<(), T::Error> {
    if *needs_flush {
        io.flush().await?;
        *needs_flush = false;
    }
    Ok(())
}

async fn read_some<T: Read + Write>(
    io: &mut T,
    needs_flush: &mut bool,
    buf: &mut [u8],
) -> Result<usize, T::Error> {
    // A peer only answers what it has seen: flush before waiting on it.
    flush_pending(io, needs_flush).await?;
    io.read(buf).await
}

async fn write_some<T: Write>(
    io: &mut T,
    needs_flush: &mut bool,
    buf: &[u8],
) -> Result<usize, T::Error> {
    let n = io.write(buf).await?;
    *needs_flush |= n > 0;
    Ok(n)
}

impl<T: Read + Write> Connection<T> {
    /// Exchanges the greeting (0xFF each way). Called by every other
    /// operation first, so calling it is optional; it is the place where a
    /// full server's [`Error::ConnectionLimit`] shows up.
    pub async fn greet(&mut self) -> Result<(), Error<T::Error>> {
        let Self { io, state } = self;
        state.usable()?;
        loop {
            match state.greeting.step() {
                GreetingStep::Done => return Ok(()),
                GreetingStep::Write(bytes) => {
                    let n = write_some(io, &mut state.needs_flush, bytes).await?;
                    if n == 0 {
                        return Err(state.fail(state.greeting.eof()));
                    }
                    state.greeting.wrote(n);
                }
                GreetingStep::Read => {
                    let mut byte = [0u8];
                    if read_some(io, &mut state.needs_flush, &mut byte).await? == 0 {
                        return Err(state.fail(state.greeting.eof()));
                    }
                    if let Err(e) = state.greeting.received(byte[0]) {
                        return Err(state.fail(e));
                    }
                }
            }
        }
    }

    /// Sends one whole message and returns once every byte is written and
    /// flushed. [`Error::Rejected`] if the peer refused its length (the
    /// connection stays usable).
    pub async fn transmit(&mut self, msg: &[u8]) -> Result<(), Error<T::Error>> {
        self.greet().await?;
        self.state.start_send(msg.len(), false)?;
        loop {
            let offset = self.send_prelude().await?;
            match msg.get(offset..) {
                Some(rest) if !rest.is_empty() => {
                    self.write_payload(rest).await?;
                }
                _ => return self.send_finish().await,
            }
        }
    }

    /// Receives one whole message into `buf` and returns it.
    ///
    /// A length over `buf.len()` or [`max_message_len`](Self::max_message_len)
    /// is answered 0x00 and reported as [`Error::TooLarge`]; the connection
    /// stays usable. [`Error::Closed`] when the peer closed between messages.
    pub async fn receive<'b>(&mut self, buf: &'b mut [u8]) -> Result<&'b [u8], Error<T::Error>> {
        self.greet().await?;
        self.state.start_receive(false)?;
        let len = self.receive_prelude(buf.len()).await?;
        while let Some(offset) = self.payload_offset() {
            // Only a resume with a smaller buffer than the first call can miss.
            let dest = buf.get_mut(offset..).ok_or(Error::InProgress)?;
            self.read_payload(dest).await?;
        }
        self.state.op = Op::Idle;
        buf.get(..len as usize).ok_or(Error::InProgress)
    }

    /// Starts receiving a message to be read in chunks, for messages larger
    /// than memory (a firmware image written to flash through 1 KiB).
    ///
    /// Lengths over `limit` (or [`max_message_len`](Self::max_message_len))
    /// are answered 0x00 and reported as [`Error::TooLarge`]. The returned
    /// reader yields exactly the announced number of bytes. If the stream ends
    /// early it reports [`Error::UnexpectedEof`]: whatever was already consumed
    /// must then be discarded.
    pub async fn begin_receive(
        &mut self,
        limit: u32,
    ) -> Result<IncomingMessage<'_, T>, Error<T::Error>> {
        self.greet().await?;
        self.state.start_receive(true)?;
        let capacity = usize::try_from(limit).unwrap_or(usize::MAX);
        let len = self.receive_prelude(capacity).await?;
        if matches!(&self.state.op, Op::Receive { rx, .. } if matches!(rx.step(), RecvStep::Delivered { .. }))
        {
            self.state.op = Op::Idle;
        }
        Ok(IncomingMessage { conn: self, len })
    }

    /// Starts sending a message of `len` bytes to be written in chunks (from
    /// a file, a sensor, flash), without holding it whole.
    ///
    /// Returns once the peer accepted the length; [`Error::Rejected`] if it
    /// did not. Write exactly `len` bytes to the writer, then call
    /// [`OutgoingMessage::finish`].
    pub async fn begin_transmit(
        &mut self,
        len: usize,
    ) -> Result<OutgoingMessage<'_, T>, Error<T::Error>> {
        self.greet().await?;
        self.state.start_send(len, true)?;
        self.send_prelude().await?;
        Ok(OutgoingMessage { conn: self })
    }

    /// Flushes the transport.
    pub async fn flush(&mut self) -> Result<(), Error<T::Error>> {
        self.io.flush().await?;
        self.state.needs_flush = false;
        Ok(())
    }

    /// Runs the send machine up to the payload. Returns the payload offset
    /// reached; [`Error::Rejected`] when the peer refused.
    async fn send_prelude(&mut self) -> Result<usize, Error<T::Error>> {
        let Self { io, state } = self;
        loop {
            let Op::Send { tx, .. } = &mut state.op else {
                return Err(Error::InProgress);
            };
            match tx.step() {
                SendStep::WriteLength(bytes) => {
                    let n = write_some(io, &mut state.needs_flush, bytes).await?;
                    if n == 0 {
                        let e = tx.eof();
                        return Err(state.fail(e));
                    }
                    tx.wrote(n);
                }
                SendStep::ReadStatus => {
                    let mut byte = [0u8];
                    if read_some(io, &mut state.needs_flush, &mut byte).await? == 0 {
                        let e = tx.eof();
                        return Err(state.fail(e));
                    }
                    if let Err(e) = tx.received_status(byte[0]) {
                        return Err(state.fail(e));
                    }
                }
                SendStep::WritePayload { offset, .. } => return Ok(offset as usize),
                SendStep::Delivered => return Ok(tx.len() as usize),
                SendStep::Rejected => {
                    let len = tx.len();
                    state.op = Op::Idle;
                    return Err(Error::Rejected { len });
                }
            }
        }
    }

    /// Writes payload bytes from `src` (which starts at the current offset)
    /// once; returns how many went.
    async fn write_payload(&mut self, src: &[u8]) -> Result<usize, Error<T::Error>> {
        let Self { io, state } = self;
        let Op::Send { tx, .. } = &mut state.op else {
            return Err(Error::InProgress);
        };
        let SendStep::WritePayload { remaining, .. } = tx.step() else {
            return Ok(0);
        };
        let src = &src[..src.len().min(remaining as usize)];
        if src.is_empty() {
            return Ok(0);
        }
        let n = write_some(io, &mut state.needs_flush, src).await?;
        if n == 0 {
            let e = tx.eof();
            return Err(state.fail(e));
        }
        tx.wrote(n);
        Ok(n)
    }

    /// Flushes a delivered message and frees the slot.
    async fn send_finish(&mut self) -> Result<(), Error<T::Error>> {
        match &self.state.op {
            Op::Send { tx, .. } if tx.step() == SendStep::Delivered => {}
            _ => return Err(Error::InProgress),
        }
        self.flush().await?;
        self.state.op = Op::Idle;
        Ok(())
    }

    /// Runs the receive machine up to the payload, deciding by `capacity`.
    /// Returns the accepted length; [`Error::TooLarge`] after refusing.
    async fn receive_prelude(&mut self, capacity: usize) -> Result<u32, Error<T::Error>> {
        let Self { io, state } = self;
        let capacity = capacity.min(usize::try_from(state.max_message_len).unwrap_or(usize::MAX));
        loop {
            let Op::Receive { rx, .. } = &mut state.op else {
                return Err(Error::InProgress);
            };
            match rx.step() {
                RecvStep::ReadLength => {
                    let n = read_some(io, &mut state.needs_flush, rx.length_buf()).await?;
                    if n == 0 {
                        let e = rx.eof();
                        return Err(state.fail(e));
                    }
                    rx.read(n);
                }
                RecvStep::Decide { .. } => {
                    rx.decide(capacity);
                }
                RecvStep::WriteStatus(status) => {
                    let n = write_some(io, &mut state.needs_flush, &[status.to_byte()]).await?;
                    if n == 0 {
                        let e = rx.eof();
                        return Err(state.fail(e));
                    }
                    rx.wrote(n);
                }
                RecvStep::ReadPayload { offset, remaining } => return Ok(offset + remaining),
                // No payload read follows an empty message or a refusal, so
                // the status must not wait in a buffer for one.
                RecvStep::Delivered { len } => {
                    flush_pending(io, &mut state.needs_flush).await?;
                    return Ok(len);
                }
                RecvStep::Refused { len } => {
                    flush_pending(io, &mut state.needs_flush).await?;
                    state.op = Op::Idle;
                    return Err(Error::TooLarge {
                        len: len.into(),
                        capacity: capacity as u64,
                    });
                }
            }
        }
    }

    /// Reads payload bytes into `dest` (which stands for the current offset)
    /// once; returns how many came (0 once the message is complete).
    async fn read_payload(&mut self, dest: &mut [u8]) -> Result<usize, Error<T::Error>> {
        let Self { io, state } = self;
        let Op::Receive { rx, .. } = &mut state.op else {
            return Ok(0);
        };
        let RecvStep::ReadPayload { remaining, .. } = rx.step() else {
            return Ok(0);
        };
        let len = dest
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        if len == 0 {
            return Ok(0);
        }
        let n = read_some(io, &mut state.needs_flush, &mut dest[..len]).await?;
        if n == 0 {
            let e = rx.eof();
            return Err(state.fail(e));
        }
        rx.read(n);
        Ok(n)
    }

    /// Where the payload of the message being received stands, while bytes
    /// of it are owed.
    fn payload_offset(&self) -> Option<usize> {
        match &self.state.op {
            Op::Receive { rx, .. } => match rx.step() {
                RecvStep::ReadPayload { offset, .. } => Some(offset as usize),
                _ => None,
            },
            _ => None,
        }
    }

    /// Payload bytes still owed by the message in flight.
    fn payload_remaining(&self) -> u32 {
        match &self.state.op {
            Op::Send { tx, .. } => match tx.step() {
                SendStep::WritePayload { remaining, .. } => remaining,
                _ => 0,
            },
            Op::Receive { rx, .. } => match rx.step() {
                RecvStep::ReadPayload { remaining, .. } => remaining,
                _ => 0,
            },
            Op::Idle => 0,
        }
    }
}

/// A message being received chunk by chunk; see [`Connection::begin_receive`].
///
/// Dropping it before the end leaves the message in progress: call
/// `begin_receive` again to continue.
#[derive(Debug)]
pub struct IncomingMessage<'c, T> {
    conn: &'c mut Connection<T>,
    len: u32,
}

impl<T: Read + Write> IncomingMessage<'_, T> {
    /// The announced (and accepted) length.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> u32 {
        self.conn.payload_remaining()
    }

    /// Reads the next chunk into `buf`; `Ok(0)` once the whole message has
    /// been read.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error<T::Error>> {
        let n = self.conn.read_payload(buf).await?;
        if self.remaining() == 0 {
            if let Op::Receive { chunked: true, .. } = self.conn.state.op {
                self.conn.state.op = Op::Idle;
            }
        }
        Ok(n)
    }

    /// Reads until `buf` is full. [`Error::UnexpectedEof`] if the message is
    /// shorter than `buf`.
    pub async fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), Error<T::Error>> {
        while !buf.is_empty() {
            let n = self.read(buf).await?;
            if n == 0 {
                return Err(Error::UnexpectedEof {
                    phase: crate::Phase::Payload,
                });
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

impl<T: Read + Write> ErrorType for IncomingMessage<'_, T>
where
    T::Error: 'static,
{
    type Error = Error<T::Error>;
}

impl<T: Read + Write> Read for IncomingMessage<'_, T>
where
    T::Error: 'static,
{
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        IncomingMessage::read(self, buf).await
    }
}

/// A message being sent chunk by chunk; see [`Connection::begin_transmit`].
///
/// Dropping it before [`finish`](Self::finish) leaves the message in
/// progress: call `begin_transmit` with the same length to continue.
#[derive(Debug)]
pub struct OutgoingMessage<'c, T> {
    conn: &'c mut Connection<T>,
}

impl<T: Read + Write> OutgoingMessage<'_, T> {
    /// Bytes still owed.
    pub fn remaining(&self) -> u32 {
        self.conn.payload_remaining()
    }

    /// Writes some of `chunk` (never past the announced length) and returns
    /// how many bytes went. Writing past the end is [`Error::TooLarge`].
    pub async fn write(&mut self, chunk: &[u8]) -> Result<usize, Error<T::Error>> {
        if chunk.is_empty() {
            return Ok(0);
        }
        match self.conn.write_payload(chunk).await? {
            0 => Err(Error::TooLarge {
                len: chunk.len() as u64,
                capacity: 0,
            }),
            n => Ok(n),
        }
    }

    /// Writes all of `chunk`.
    pub async fn write_all(&mut self, mut chunk: &[u8]) -> Result<(), Error<T::Error>> {
        while !chunk.is_empty() {
            let n = self.write(chunk).await?;
            chunk = &chunk[n..];
        }
        Ok(())
    }

    /// Completes the message: flushes and frees the connection for the next
    /// one. [`Error::InProgress`] while bytes are still owed.
    pub async fn finish(self) -> Result<(), Error<T::Error>> {
        self.conn.send_finish().await
    }
}

impl<T: Read + Write> ErrorType for OutgoingMessage<'_, T>
where
    T::Error: 'static,
{
    type Error = Error<T::Error>;
}

impl<T: Read + Write> Write for OutgoingMessage<'_, T>
where
    T::Error: 'static,
{
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        OutgoingMessage::write(self, buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.conn.flush().await
    }
}

/// Refuses a connection at the server's limit: writes the single byte 0xFE
/// (instead of the greeting) and flushes. Close the transport afterwards.
pub async fn refuse_connection_limit<T: Write>(io: &mut T) -> Result<(), T::Error> {
    io.write_all(&CONNECTION_LIMIT_REFUSAL).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a connection costs beyond its transport: greeting, the message
    /// in flight, the limit and two flags.
    #[test]
    fn test_connection_state_size() {
        let size = core::mem::size_of::<Connection<()>>();
        std::println!("asynch::Connection state: {size} bytes");
        assert!(size <= 24, "{size}");
    }
}
