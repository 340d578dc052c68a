//! Async driver: a [`Connection`] over any `embedded_io_async::{Read, Write}`
//! transport (an embassy-net `TcpSocket`, a UART, an in-memory pipe).
//!
//! The driver is a thin loop around the sans-IO machines. The blocking driver
//! in [`crate::blocking`] is the very same code without the `.await`s: both
//! are expanded from one source (the crate's private `driver` module).
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

use crate::driver::State;
use crate::error::Error;
use crate::greeting::CONNECTION_LIMIT_REFUSAL;
use crate::wire::MAX_MESSAGE_LEN;

/// The driver operations, `async`.
pub(crate) mod ops {
    use embedded_io_async::{Read, Write};

    crate::driver::driver_ops!([async] [.await]);
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
    pub(crate) io: T,
    pub(crate) state: State,
}

impl<T> Connection<T> {
    /// Wraps a connected transport. Nothing is sent until the first call.
    pub fn new(io: T) -> Self {
        Self {
            io,
            state: State::new(),
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

impl<T: Read + Write> Connection<T> {
    /// Exchanges the greeting (0xFF each way). Called by every other
    /// operation first, so calling it is optional; it is the place where a
    /// full server's [`Error::ConnectionLimit`] shows up.
    pub async fn greet(&mut self) -> Result<(), Error<T::Error>> {
        ops::greet(self).await
    }

    /// Sends one whole message and returns once every byte is written and
    /// flushed. [`Error::Rejected`] if the peer refused its length (the
    /// connection stays usable).
    pub async fn transmit(&mut self, msg: &[u8]) -> Result<(), Error<T::Error>> {
        ops::transmit(self, msg).await
    }

    /// Receives one whole message into `buf` and returns it.
    ///
    /// A length over `buf.len()` or [`max_message_len`](Self::max_message_len)
    /// is answered 0x00 and reported as [`Error::TooLarge`]; the connection
    /// stays usable. [`Error::Closed`] when the peer closed between messages.
    pub async fn receive<'b>(&mut self, buf: &'b mut [u8]) -> Result<&'b [u8], Error<T::Error>> {
        ops::receive(self, buf).await
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
        let len = ops::begin_receive(self, limit).await?;
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
        ops::begin_transmit(self, len).await?;
        Ok(OutgoingMessage { conn: self })
    }

    /// Flushes the transport.
    pub async fn flush(&mut self) -> Result<(), Error<T::Error>> {
        ops::flush(self).await
    }
}

/// A message being received chunk by chunk; see [`Connection::begin_receive`].
///
/// Dropping it before the end leaves the message in progress: call
/// `begin_receive` again to continue.
#[derive(Debug)]
pub struct IncomingMessage<'c, T> {
    pub(crate) conn: &'c mut Connection<T>,
    pub(crate) len: u32,
}

impl<T> IncomingMessage<'_, T> {
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
        self.conn.state.payload_remaining()
    }
}

impl<T: Read + Write> IncomingMessage<'_, T> {
    /// Reads the next chunk into `buf`; `Ok(0)` once the whole message has
    /// been read.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error<T::Error>> {
        ops::chunk_read(self.conn, buf).await
    }

    /// Reads until `buf` is full. [`Error::UnexpectedEof`] if the message is
    /// shorter than `buf`.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Error<T::Error>> {
        ops::chunk_read_exact(self.conn, buf).await
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
    pub(crate) conn: &'c mut Connection<T>,
}

impl<T> OutgoingMessage<'_, T> {
    /// Bytes still owed.
    pub fn remaining(&self) -> u32 {
        self.conn.state.payload_remaining()
    }
}

impl<T: Read + Write> OutgoingMessage<'_, T> {
    /// Writes some of `chunk` (never past the announced length) and returns
    /// how many bytes went. Writing past the end is [`Error::TooLarge`].
    pub async fn write(&mut self, chunk: &[u8]) -> Result<usize, Error<T::Error>> {
        ops::chunk_write(self.conn, chunk).await
    }

    /// Writes all of `chunk`.
    pub async fn write_all(&mut self, chunk: &[u8]) -> Result<(), Error<T::Error>> {
        ops::chunk_write_all(self.conn, chunk).await
    }

    /// Completes the message: flushes and frees the connection for the next
    /// one. [`Error::InProgress`] while bytes are still owed.
    pub async fn finish(self) -> Result<(), Error<T::Error>> {
        ops::send_finish(self.conn).await
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
