//! [`Transport`]: what the operations of a [`Session`](crate::Session) and a
//! [`Client`](crate::Client) need of the byte stream under the protocol.
//!
//! Two streams have it: a plain [`Socket`], and (feature `tls`) TLS records
//! over one (`tls::TlsSocket`). Both keep the deadlines
//! of [`Timeouts`] in the socket, so an operation reads the same over
//! either, and the wire protocol inside TLS is unchanged.

use embassy_net::IpEndpoint;
use embassy_time::Instant;
use tinyproto::embedded_io_async::{Read, ReadReady, Write};

use crate::error::{Deadline, NetError};
use crate::socket::{Socket, Timeouts};

mod sealed {
    pub trait Sealed {}
}
pub(crate) use sealed::Sealed;

/// The byte stream under a tinyproto connection of this crate, with the
/// deadlines of its [`Timeouts`]: a [`Socket`], or TLS over one. Sealed:
/// the operations rely on how these two keep their deadlines.
// Single-threaded executors: the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Transport: Read<Error = NetError> + Write<Error = NetError> + ReadReady + Sealed {
    /// The time limits in force.
    fn timeouts(&self) -> Timeouts;

    /// The peer's address, while connected.
    fn remote_endpoint(&self) -> Option<IpEndpoint>;

    /// An exchange starts now and must end within `which`'s limit.
    fn begin_exchange(&mut self, which: Deadline);

    /// Waits for the peer to start an exchange (until `wait_until`, if any);
    /// its first byte starts the message deadline.
    fn await_exchange(&mut self, wait_until: Option<(Instant, Deadline)>);

    /// No exchange in progress: no deadline.
    fn end_exchange(&mut self);

    /// After the peer answered our length with 0x00: whether what already
    /// arrived behind that byte is exactly the rest of a length, so that the
    /// 0x00 was the first byte of the peer's own message
    /// ([`tinyproto::zero_answer_is_a_length`]).
    fn zero_answer_is_a_length(&mut self) -> bool;

    /// Resets the connection now (the RST leaves with the stack's next poll).
    fn reset(&mut self);

    /// Closes in order within [`Timeouts::close`] (see [`Socket::close`]):
    /// `Ok` once the peer has acknowledged everything written and our FIN.
    async fn shutdown(self) -> Result<(), NetError>;
}

impl Sealed for Socket<'_> {}

impl Transport for Socket<'_> {
    fn timeouts(&self) -> Timeouts {
        *Socket::timeouts(self)
    }

    fn remote_endpoint(&self) -> Option<IpEndpoint> {
        Socket::remote_endpoint(self)
    }

    fn begin_exchange(&mut self, which: Deadline) {
        Socket::begin_exchange(self, which)
    }

    fn await_exchange(&mut self, wait_until: Option<(Instant, Deadline)>) {
        Socket::await_exchange(self, wait_until)
    }

    fn end_exchange(&mut self) {
        Socket::end_exchange(self)
    }

    fn zero_answer_is_a_length(&mut self) -> bool {
        tinyproto::zero_answer_is_a_length(self.tcp().recv_queue())
    }

    fn reset(&mut self) {
        self.tcp_mut().abort();
    }

    async fn shutdown(mut self) -> Result<(), NetError> {
        Socket::close(&mut self).await
    }
}
