//! Blocking driver: a [`Connection`] over any `embedded_io::{Read, Write}`
//! transport, and with the `std` feature over `std::net::TcpStream`.
//!
//! It is the async driver's code ([`crate::asynch`]) without the `.await`s:
//! both are expanded from one source, so one implementation serves both, and
//! this one is plain synchronous code with no futures on the stack. The
//! cancellation and resumption rules are the async ones,
//! with "a future is dropped" read as "a call returned an `Io` error" — so on
//! a non-blocking transport that returns `WouldBlock`, simply call the same
//! operation again later.

use embedded_io::{ErrorType, Read, Write};

use crate::asynch;
use crate::error::Error;
use crate::greeting::CONNECTION_LIMIT_REFUSAL;

/// The driver operations, blocking.
mod ops {
    use embedded_io::{Read, Write};

    // The transport's calls are made in one place each, not inlined into every
    // step: the firmware holds one copy of them (flash over speed).
    crate::driver::driver_ops!([] [] #[inline(never)]);
}

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
pub struct Connection<T>(asynch::Connection<T>);

impl<T> Connection<T> {
    /// Wraps a connected transport. Nothing is sent until the first call.
    pub fn new(io: T) -> Self {
        Self(asynch::Connection::new(io))
    }

    /// Caps the length of messages this side accepts (see
    /// [`asynch::Connection::set_max_message_len`]).
    pub fn set_max_message_len(&mut self, len: u32) {
        self.0.set_max_message_len(len)
    }

    /// The cap on accepted message lengths.
    pub fn max_message_len(&self) -> u32 {
        self.0.max_message_len()
    }

    /// True once both greeting bytes have crossed.
    pub fn is_greeted(&self) -> bool {
        self.0.is_greeted()
    }

    /// True after a protocol error: the connection carries nothing more.
    pub fn is_broken(&self) -> bool {
        self.0.is_broken()
    }

    /// True while a message is half sent or half received.
    pub fn is_in_progress(&self) -> bool {
        self.0.is_in_progress()
    }

    /// The transport.
    pub fn get_ref(&self) -> &T {
        self.0.get_ref()
    }

    /// The transport, mutably (for socket options; moving bytes through it
    /// directly puts the connection out of step).
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }

    /// Gives the transport back.
    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

impl<T: Read + Write> Connection<T> {
    /// Exchanges the greeting; see [`asynch::Connection::greet`].
    pub fn greet(&mut self) -> Result<(), Error<T::Error>> {
        ops::greet(&mut self.0)
    }

    /// Sends one whole message; see [`asynch::Connection::transmit`].
    pub fn transmit(&mut self, msg: &[u8]) -> Result<(), Error<T::Error>> {
        ops::transmit(&mut self.0, msg)
    }

    /// Receives one whole message into `buf`; see
    /// [`asynch::Connection::receive`].
    pub fn receive<'b>(&mut self, buf: &'b mut [u8]) -> Result<&'b [u8], Error<T::Error>> {
        ops::receive(&mut self.0, buf)
    }

    /// Starts a chunked receive; see [`asynch::Connection::begin_receive`].
    pub fn begin_receive(&mut self, limit: u32) -> Result<IncomingMessage<'_, T>, Error<T::Error>> {
        let c = &mut self.0;
        let len = ops::begin_receive(c, limit)?;
        Ok(IncomingMessage(asynch::IncomingMessage { conn: c, len }))
    }

    /// Starts a chunked send; see [`asynch::Connection::begin_transmit`].
    pub fn begin_transmit(
        &mut self,
        len: usize,
    ) -> Result<OutgoingMessage<'_, T>, Error<T::Error>> {
        let c = &mut self.0;
        ops::begin_transmit(c, len)?;
        Ok(OutgoingMessage(asynch::OutgoingMessage { conn: c }))
    }

    /// Flushes the transport.
    pub fn flush(&mut self) -> Result<(), Error<T::Error>> {
        ops::flush(&mut self.0)
    }
}

/// A message being received chunk by chunk; see
/// [`asynch::IncomingMessage`].
#[derive(Debug)]
pub struct IncomingMessage<'c, T>(asynch::IncomingMessage<'c, T>);

impl<T: Read + Write> IncomingMessage<'_, T> {
    /// The announced (and accepted) length.
    pub fn len(&self) -> u32 {
        self.0.len()
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> u32 {
        self.0.remaining()
    }

    /// Reads the next chunk; `Ok(0)` once the whole message has been read.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error<T::Error>> {
        ops::chunk_read(self.0.conn, buf)
    }

    /// Reads until `buf` is full.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Error<T::Error>> {
        ops::chunk_read_exact(self.0.conn, buf)
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

/// A message being sent chunk by chunk; see [`asynch::OutgoingMessage`].
#[derive(Debug)]
pub struct OutgoingMessage<'c, T>(asynch::OutgoingMessage<'c, T>);

impl<T: Read + Write> OutgoingMessage<'_, T> {
    /// Bytes still owed.
    pub fn remaining(&self) -> u32 {
        self.0.remaining()
    }

    /// Writes some of `chunk`, never past the announced length.
    pub fn write(&mut self, chunk: &[u8]) -> Result<usize, Error<T::Error>> {
        ops::chunk_write(self.0.conn, chunk)
    }

    /// Writes all of `chunk`.
    pub fn write_all(&mut self, chunk: &[u8]) -> Result<(), Error<T::Error>> {
        ops::chunk_write_all(self.0.conn, chunk)
    }

    /// Completes the message; [`Error::InProgress`] while bytes are owed.
    pub fn finish(self) -> Result<(), Error<T::Error>> {
        ops::send_finish(self.0.conn)
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
        ops::flush(self.0.conn)
    }
}

/// Refuses a connection at the server's limit: writes the single byte 0xFE
/// and flushes. Close the transport afterwards.
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
}
