//! Async driver: a [`Connection`] over any `embedded_io_async::{Read, Write}`
//! transport (an embassy-net `TcpSocket`, a UART, an in-memory pipe, a tokio
//! `TcpStream` through `embedded-io-adapters`).
//!
//! Every operation is the same short loop over the [`Machine`] (one future,
//! one copy in a firmware): ask it for the next step, do that I/O (its
//! private `perform`), report what moved, until it is done. The blocking
//! driver ([`crate::blocking`]) is the same loop without `.await`.
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
//! A caller's mistake (a shorter buffer on resume, a chunk past the end) is
//! [`Error::Misuse`] and moves nothing.
//!
//! This relies on the transport's own calls being cancel-safe: a `read` or
//! `write` future dropped before it completes has moved no bytes (true of
//! embassy-net's `TcpSocket`).

use core::future::Future;

use embedded_io_async::{ErrorType, Read, ReadReady, Write};

use crate::error::{Error, Misuse};
use crate::machine::{exchange, FlushPolicy, Io, Machine, Moved, Next, Op, Payload, Step};
use crate::wire::CONNECTION_LIMIT_REFUSAL;

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
    machine: Machine,
}

/// Does the one piece of I/O the machine asked for and says what moved. The
/// only place this driver touches the transport (one copy in a firmware).
async fn perform<T: Read + Write>(io: &mut T, request: Io<'_>) -> Result<Moved, T::Error> {
    Ok(match request {
        Io::Write(bytes) => Moved::Wrote(io.write(bytes).await?),
        Io::Read(buf) => Moved::Read(io.read(buf).await?),
        Io::Flush => {
            io.flush().await?;
            Moved::Flushed
        }
    })
}

impl<T> Connection<T> {
    /// Wraps a connected transport. Nothing is sent until the first call.
    pub fn new(io: T) -> Self {
        Self {
            io,
            machine: Machine::new(),
        }
    }

    /// The protocol state, for queries and settings
    /// ([`Machine::set_max_message_len`], [`Machine::set_flush_policy`], ...).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Caps the length of messages this side accepts (see
    /// [`Machine::set_max_message_len`]).
    pub fn set_max_message_len(&mut self, len: u32) {
        self.machine.set_max_message_len(len);
    }

    /// The cap on accepted message lengths.
    pub fn max_message_len(&self) -> u32 {
        self.machine.max_message_len()
    }

    /// Chooses when written bytes are flushed (see [`FlushPolicy`]).
    pub fn set_flush_policy(&mut self, policy: FlushPolicy) {
        self.machine.set_flush_policy(policy);
    }

    /// True once both greeting bytes have crossed.
    pub fn is_greeted(&self) -> bool {
        self.machine.is_greeted()
    }

    /// True after a protocol error: the connection carries nothing more.
    pub fn is_broken(&self) -> bool {
        self.machine.is_broken()
    }

    /// True while a message is half sent or half received.
    pub fn is_in_progress(&self) -> bool {
        self.machine.is_in_progress()
    }

    /// Puts the connection out of step for good (see [`Machine::break_off`]).
    pub fn break_off(&mut self) {
        self.machine.break_off();
    }

    /// The transport.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The transport, mutably (for socket options; moving bytes through it
    /// directly puts the connection out of step).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// Gives the transport back.
    pub fn into_inner(self) -> T {
        self.io
    }
}

impl<T: Read + Write> Connection<T> {
    /// Exchanges the greeting; see [`Machine::greet`].
    pub async fn greet(&mut self) -> Result<(), Error<T::Error>> {
        let (op, bound, payload) = exchange::greet();
        self.drive(Call::Exchange(op, bound, payload))
            .await
            .map(drop)
    }

    /// Sends one whole message; see [`Machine::transmit`]. Returns once every
    /// byte is written (and flushed, under the default [`FlushPolicy`]).
    pub async fn transmit(&mut self, msg: &[u8]) -> Result<(), Error<T::Error>> {
        let (op, bound, payload) = exchange::transmit(msg);
        self.drive(Call::Exchange(op, bound, payload))
            .await
            .map(drop)
    }

    /// Receives one whole message into `buf` and returns it; see
    /// [`Machine::receive`].
    pub async fn receive<'b>(&mut self, buf: &'b mut [u8]) -> Result<&'b [u8], Error<T::Error>> {
        let (op, bound, payload) = exchange::receive(&self.machine, buf);
        let len = self.drive(Call::Exchange(op, bound, payload)).await? as usize;
        // `len` is within `buf` (the machine checked it); `get` keeps a panic path out.
        buf.get(..len)
            .ok_or(Error::Misuse(Misuse::ShorterBuffer { len: len as u32 }))
    }

    /// Reads the length of the next message without answering it; follow
    /// with `receive`, `begin_receive` or [`reject`](Self::reject). See
    /// [`Machine::next_length`].
    pub fn next_length(&mut self) -> impl Future<Output = Result<u32, Error<T::Error>>> + '_ {
        self.drive(Call::Rules(Machine::next_length_rules, Payload::None))
    }

    /// Answers 0x00 to the length read by [`next_length`](Self::next_length);
    /// the connection goes on. See [`Machine::reject`].
    pub fn reject(&mut self) -> impl Future<Output = Result<u32, Error<T::Error>>> + '_ {
        self.drive(Call::Rules(Machine::reject_rules, Payload::None))
    }

    /// Starts a chunked receive, for messages larger than memory; see
    /// [`Machine::begin_receive`].
    pub async fn begin_receive(
        &mut self,
        limit: u32,
    ) -> Result<IncomingMessage<'_, T>, Error<T::Error>> {
        let (op, bound, payload) = exchange::begin_receive(limit);
        let len = self.drive(Call::Exchange(op, bound, payload)).await?;
        Ok(IncomingMessage { conn: self, len })
    }

    /// Starts a chunked send of `len` bytes; see [`Machine::begin_transmit`].
    pub async fn begin_transmit(
        &mut self,
        len: u32,
    ) -> Result<OutgoingMessage<'_, T>, Error<T::Error>> {
        let (op, bound, payload) = exchange::begin_transmit(len);
        self.drive(Call::Exchange(op, bound, payload)).await?;
        Ok(OutgoingMessage { conn: self })
    }

    /// Flushes what was written, whatever the [`FlushPolicy`].
    pub async fn flush(&mut self) -> Result<(), Error<T::Error>> {
        self.drive(Call::Rules(Machine::flush_rules, Payload::None))
            .await
            .map(drop)
    }

    /// The driver: asks the machine for the call's next step, does that I/O
    /// and reports what moved, until the call is done. Every operation runs
    /// through this one loop (one future, one copy in a firmware); a chunk
    /// is done by its one payload transfer.
    async fn drive(&mut self, mut call: Call<'_>) -> Result<u32, Error<T::Error>> {
        loop {
            let step = next_step(&mut self.machine, &mut call);
            match step {
                Step::Io(request) => {
                    let moved = perform(&mut self.io, request).await?;
                    self.machine.moved(moved).map_err(Error::widen)?;
                    // The one read or write a chunk asks for is the chunk itself.
                    if let (
                        Call::Rules(_, Payload::In(_) | Payload::Out(_)),
                        Moved::Read(n) | Moved::Wrote(n),
                    ) = (&call, moved)
                    {
                        return Ok(n as u32);
                    }
                }
                Step::Done(result) => return result.map_err(Error::widen),
            }
        }
    }
}

/// The next step of `call`: the operation's rules say what is next, and one
/// `next_step` turns that into the step (one copy of it in the loop, not
/// one per operation).
#[inline(always)]
fn next_step<'a>(machine: &'a mut Machine, call: &'a mut Call<'_>) -> Step<'a, u32> {
    let (next, payload) = match call {
        Call::Exchange(op, bound, payload) => {
            let next = machine.exchange_rules(*op, *bound, payload);
            (next, payload.reborrow().skip(machine.payload_offset()))
        }
        Call::Rules(rules, payload) => (rules(machine, payload), payload.reborrow()),
    };
    machine.next_step(next, payload)
}

/// One operation of [`Connection::drive`], with its arguments.
enum Call<'b> {
    /// The greeting or a message operation: [`Machine::exchange`]'s arguments.
    Exchange(Op, u32, Payload<'b>),
    /// Another operation: its rules, and its chunk (or none). Only a chunk's
    /// read or write carries a payload here.
    Rules(Rules, Payload<'b>),
}

/// The rules of an operation other than the exchange (`Machine::*_rules`):
/// what is next, given its chunk (or none). Through a pointer, so that an
/// image carries the rules of the operations it calls and no others (a
/// server that never sends in chunks has no `write_chunk`).
type Rules = fn(&mut Machine, &Payload<'_>) -> Next;

impl<T: Read + Write + ReadReady> Connection<T> {
    /// True when nothing of a message is in flight and the transport has
    /// bytes to read at once ([`ReadReady`]): the peer has begun a message
    /// (or closed). A transmit now could cross it: receive first. Looks
    /// without waiting.
    pub fn peer_has_begun(&mut self) -> Result<bool, Error<T::Error>> {
        Ok(self.machine.is_between_messages() && self.io.read_ready()?)
    }
}

/// A message being received chunk by chunk; see
/// [`Connection::begin_receive`]. It implements `embedded_io_async::Read`.
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
        self.conn.machine.remaining()
    }

    /// Reads the next chunk into `buf`; `Ok(0)` once the whole message has
    /// been read.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error<T::Error>> {
        let n = self
            .conn
            .drive(Call::Rules(Machine::read_chunk_rules, Payload::In(buf)))
            .await?;
        Ok(n as usize)
    }

    /// Reads until `buf` is full; [`Misuse::PastEnd`]
    /// if the message is shorter than `buf`.
    pub async fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), Error<T::Error>> {
        while !buf.is_empty() {
            match self.read(buf).await? {
                0 => return Err(Error::Misuse(Misuse::PastEnd)),
                n => buf = &mut buf[n..],
            }
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
/// It implements `embedded_io_async::Write`.
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
        self.conn.machine.remaining()
    }

    /// Writes some of `chunk` (never past the announced length) and returns
    /// how many bytes went; [`Misuse::PastEnd`]
    /// once nothing more is owed.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<usize, Error<T::Error>> {
        let n = self
            .conn
            .drive(Call::Rules(Machine::write_chunk_rules, Payload::Out(chunk)))
            .await?;
        Ok(n as usize)
    }

    /// Writes all of `chunk`.
    pub async fn write_all(&mut self, mut chunk: &[u8]) -> Result<(), Error<T::Error>> {
        while !chunk.is_empty() {
            let n = self.write(chunk).await?;
            chunk = &chunk[n..];
        }
        Ok(())
    }

    /// Completes the message (flushed, under the default [`FlushPolicy`])
    /// and frees the connection for the next one;
    /// [`Misuse::Unfinished`] while bytes are owed.
    pub async fn finish(self) -> Result<(), Error<T::Error>> {
        self.conn
            .drive(Call::Rules(Machine::finish_rules, Payload::None))
            .await
            .map(drop)
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

    /// What a connection costs beyond its transport: the machine.
    #[test]
    fn test_connection_state_size() {
        let size = core::mem::size_of::<Connection<()>>();
        std::println!("asynch::Connection state: {size} bytes");
        assert!(size <= 24, "{size}");
    }
}
