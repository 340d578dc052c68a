//! Blocking driver: a [`Connection`] over any `embedded_io::{Read, Write}`
//! transport, and with the `std` feature over `std::net::TcpStream`.
//!
//! Every operation is the same short loop over the [`Machine`]: ask it for
//! the next step, do that I/O (its private `perform`), report what moved, until it is
//! done. The async driver ([`crate::asynch`]) is the same loop with `.await`.
//! The cancellation and resumption rules are the async ones, with "a future
//! is dropped" read as "a call returned an `Io` error": on a non-blocking
//! transport that returns `WouldBlock`, simply call the same operation again
//! later.

use embedded_io::{ErrorType, Read, ReadReady, Write};

use crate::error::{Error, Misuse};
use crate::machine::{exchange, FlushPolicy, Io, Machine, Moved, Op, Payload, Step};
use crate::wire::CONNECTION_LIMIT_REFUSAL;

/// A tinyproto connection over a blocking transport.
///
/// ```no_run
/// # #[cfg(feature = "std")] fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let stream = std::net::TcpStream::connect("127.0.0.1:7000")?;
/// let mut conn = tinyproto::blocking::Connection::from_std(stream);
/// conn.transmit(b"hello")?;
/// let mut buf = [0u8; 256];
/// let reply = conn.receive(&mut buf)?;
/// # let _ = reply; Ok(()) }
/// ```
#[derive(Debug)]
pub struct Connection<T> {
    io: T,
    machine: Machine,
}

/// Does the one piece of I/O the machine asked for and says what moved. The
/// only place this driver touches the transport (one copy in a firmware).
#[inline(never)]
fn perform<T: Read + Write>(io: &mut T, request: Io<'_>) -> Result<Moved, T::Error> {
    Ok(match request {
        Io::Write(bytes) => Moved::Wrote(io.write(bytes)?),
        Io::Read(buf) => Moved::Read(io.read(buf)?),
        Io::Flush => {
            io.flush()?;
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
    pub fn greet(&mut self) -> Result<(), Error<T::Error>> {
        let (op, bound, payload) = exchange::greet();
        self.exchange(op, bound, payload).map(drop)
    }

    /// Sends one whole message; see [`Machine::transmit`]. Returns once every
    /// byte is written (and flushed, under the default [`FlushPolicy`]).
    pub fn transmit(&mut self, msg: &[u8]) -> Result<(), Error<T::Error>> {
        let (op, bound, payload) = exchange::transmit(msg);
        self.exchange(op, bound, payload).map(drop)
    }

    /// Receives one whole message into `buf` and returns it; see
    /// [`Machine::receive`].
    pub fn receive<'b>(&mut self, buf: &'b mut [u8]) -> Result<&'b [u8], Error<T::Error>> {
        let (op, bound, payload) = exchange::receive(&self.machine, buf);
        let len = self.exchange(op, bound, payload)? as usize;
        // `len` is within `buf` (the machine checked it); `get` keeps a panic path out.
        buf.get(..len)
            .ok_or(Error::Misuse(Misuse::ShorterBuffer { len: len as u32 }))
    }

    /// Reads the length of the next message without answering it; follow
    /// with `receive`, `begin_receive` or [`reject`](Self::reject). See
    /// [`Machine::next_length`].
    pub fn next_length(&mut self) -> Result<u32, Error<T::Error>> {
        self.run(&mut (), |machine, ()| machine.next_length())
    }

    /// Answers 0x00 to the length read by [`next_length`](Self::next_length);
    /// the connection goes on. See [`Machine::reject`].
    pub fn reject(&mut self) -> Result<u32, Error<T::Error>> {
        self.run(&mut (), |machine, ()| machine.reject())
    }

    /// Starts a chunked receive, for messages larger than memory; see
    /// [`Machine::begin_receive`].
    pub fn begin_receive(&mut self, limit: u32) -> Result<IncomingMessage<'_, T>, Error<T::Error>> {
        let (op, bound, payload) = exchange::begin_receive(limit);
        let len = self.exchange(op, bound, payload)?;
        Ok(IncomingMessage { conn: self, len })
    }

    /// Starts a chunked send of `len` bytes; see [`Machine::begin_transmit`].
    pub fn begin_transmit(&mut self, len: u32) -> Result<OutgoingMessage<'_, T>, Error<T::Error>> {
        let (op, bound, payload) = exchange::begin_transmit(len);
        self.exchange(op, bound, payload)?;
        Ok(OutgoingMessage { conn: self })
    }

    /// Writes this side's greeting byte and flushes it, without waiting for
    /// the peer's (see [`Machine::send_greeting`]).
    pub fn send_greeting(&mut self) -> Result<(), Error<T::Error>> {
        self.run(&mut (), |machine, ()| machine.send_greeting())
    }

    /// Flushes what was written, whatever the [`FlushPolicy`].
    pub fn flush(&mut self) -> Result<(), Error<T::Error>> {
        self.run(&mut (), |machine, ()| machine.flush())
    }

    /// The driver: asks the machine for the operation's next step, does that
    /// I/O and reports what moved, until the operation is done. `buf` is the
    /// caller's message or buffer, lent to `op` at each step.
    fn run<B: ?Sized, R>(
        &mut self,
        buf: &mut B,
        op: impl for<'a> Fn(&'a mut Machine, &'a mut B) -> Step<'a, R>,
    ) -> Result<R, Error<T::Error>> {
        loop {
            match op(&mut self.machine, buf) {
                Step::Io(request) => {
                    let moved = perform(&mut self.io, request)?;
                    self.machine.moved(moved).map_err(Error::widen)?;
                }
                Step::Done(result) => return result.map_err(Error::widen),
            }
        }
    }

    /// [`run`](Self::run) for the greeting and the four message operations,
    /// which the machine runs as one exchange: one loop for all of them.
    fn exchange(
        &mut self,
        op: Op,
        bound: u32,
        mut payload: Payload<'_>,
    ) -> Result<u32, Error<T::Error>> {
        loop {
            match self.machine.exchange(op, bound, payload.reborrow()) {
                Step::Io(request) => {
                    let moved = perform(&mut self.io, request)?;
                    self.machine.moved(moved).map_err(Error::widen)?;
                }
                Step::Done(result) => return result.map_err(Error::widen),
            }
        }
    }

    /// [`run`](Self::run) for a chunk: done by its one payload transfer.
    fn run_chunk<B: ?Sized>(
        &mut self,
        buf: &mut B,
        op: impl for<'a> Fn(&'a mut Machine, &'a mut B) -> Step<'a, usize>,
    ) -> Result<usize, Error<T::Error>> {
        loop {
            match op(&mut self.machine, buf) {
                Step::Io(request) => {
                    let moved = perform(&mut self.io, request)?;
                    self.machine.moved(moved).map_err(Error::widen)?;
                    // The one read or write a chunk asks for is the chunk itself.
                    if let Moved::Read(n) | Moved::Wrote(n) = moved {
                        return Ok(n);
                    }
                }
                Step::Done(result) => return result.map_err(Error::widen),
            }
        }
    }
}

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
/// [`Connection::begin_receive`]. It implements `embedded_io::Read`.
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
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error<T::Error>> {
        self.conn
            .run_chunk(buf, |machine, buf| machine.read_chunk(buf))
    }

    /// Reads until `buf` is full; [`Misuse::PastEnd`]
    /// if the message is shorter than `buf`.
    pub fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), Error<T::Error>> {
        while !buf.is_empty() {
            match self.read(buf)? {
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
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        IncomingMessage::read(self, buf)
    }
}

/// A message being sent chunk by chunk; see [`Connection::begin_transmit`].
/// It implements `embedded_io::Write`.
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
    pub fn write(&mut self, mut chunk: &[u8]) -> Result<usize, Error<T::Error>> {
        self.conn
            .run_chunk(&mut chunk, |machine, chunk| machine.write_chunk(chunk))
    }

    /// Writes all of `chunk`.
    pub fn write_all(&mut self, mut chunk: &[u8]) -> Result<(), Error<T::Error>> {
        while !chunk.is_empty() {
            let n = self.write(chunk)?;
            chunk = &chunk[n..];
        }
        Ok(())
    }

    /// Completes the message (flushed, under the default [`FlushPolicy`])
    /// and frees the connection for the next one;
    /// [`Misuse::Unfinished`] while bytes are owed.
    pub fn finish(self) -> Result<(), Error<T::Error>> {
        self.conn.run(&mut (), |machine, ()| machine.finish())
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
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        OutgoingMessage::write(self, buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.conn.flush()
    }
}

/// Refuses a connection at the server's limit: writes the single byte 0xFE
/// (instead of the greeting) and flushes. Close the transport afterwards.
pub fn refuse_connection_limit<T: Write>(io: &mut T) -> Result<(), T::Error> {
    io.write_all(&CONNECTION_LIMIT_REFUSAL)?;
    io.flush()
}

#[cfg(feature = "std")]
mod std_glue {
    use super::*;
    use embedded_io_adapters::std::FromStd;

    impl<S: std::io::Read + std::io::Write> Connection<FromStd<S>> {
        /// Wraps a `std::io` stream (a connected `std::net::TcpStream`).
        pub fn from_std(stream: S) -> Self {
            Self::new(FromStd::new(stream))
        }

        /// The `std::io` stream.
        pub fn stream(&self) -> &S {
            self.get_ref().inner()
        }

        /// The `std::io` stream, mutably (for socket options).
        pub fn stream_mut(&mut self) -> &mut S {
            self.get_mut().inner_mut()
        }
    }
}
