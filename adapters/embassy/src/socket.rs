//! [`Socket`]: an embassy-net `TcpSocket` that keeps the deadlines of
//! [`Timeouts`], as the transport under the core's async [`Connection`].
//!
//! Deadlines live in the transport, not in the futures of the core: every
//! read, write and flush is raced against the deadline of the exchange in
//! progress and fails with [`NetError::TimedOut`] when it passes. The core
//! advances only by bytes that moved, so such a failure leaves the connection
//! resumable — the same rule as for a dropped future.
//!
//! [`Connection`]: tinyproto::asynch::Connection

use core::future::Future;

use embassy_futures::select::{select, Either};
use embassy_net::tcp::TcpSocket;
use embassy_net::IpEndpoint;
use embassy_time::{Duration, Instant, Timer};
use tinyproto::embedded_io_async::{ErrorType, Read, ReadReady, Write};

use crate::error::{Deadline, NetError};

/// Time limits of a connection. `None` means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Timeouts {
    /// TCP handshake of [`Client::connect`](crate::Client::connect).
    pub connect: Duration,
    /// The greeting (one byte each way).
    pub greeting: Duration,
    /// One whole message, from its first byte to its last: a peer that drips
    /// bytes cannot hold a socket longer than this.
    pub message: Duration,
    /// How long a `receive` (a client's, or a handler's through its
    /// `Session`) waits for a message to begin (`None`: as long as it takes).
    pub receive: Option<Duration>,
    /// The server closes a connection on which no message moved either way
    /// for this long (`None`: never).
    pub idle: Option<Duration>,
    /// The orderly close: our data and FIN acknowledged, the peer's FIN in.
    /// After it the socket is aborted (RST).
    pub close: Duration,
    /// embassy-net's own socket timeout (`TcpSocket::set_timeout`): the
    /// connection is reset when the peer acknowledges nothing for this long.
    pub tcp: Option<Duration>,
    /// TCP keep-alive interval (`TcpSocket::set_keep_alive`); pair it with a
    /// [`tcp`](Self::tcp) timeout several times larger to find dead peers on
    /// idle connections (tested: 200 ms keep-alive holds a live peer past a
    /// 1.5 s timeout; with a 0.8 s timeout smoltcp dropped it).
    pub keep_alive: Option<Duration>,
}

impl Timeouts {
    /// The defaults of `tinyproto-std`: connect 5 s, greeting 10 s, message
    /// 60 s, receive 30 s, idle none; and close 2 s, no TCP timeout, no
    /// keep-alive.
    pub const DEFAULT: Self = Self {
        connect: Duration::from_secs(5),
        greeting: Duration::from_secs(10),
        message: Duration::from_secs(60),
        receive: Some(Duration::from_secs(30)),
        idle: None,
        close: Duration::from_secs(2),
        tcp: None,
        keep_alive: None,
    };
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A connected (or connecting) embassy-net TCP socket with deadlines; the
/// transport of [`Connection`](crate::Connection).
pub struct Socket<'a> {
    tcp: TcpSocket<'a>,
    timeouts: Timeouts,
    /// The exchange in progress must end by then.
    deadline: Option<(Instant, Deadline)>,
    /// Before the first byte of the awaited exchange: stop waiting then.
    wait_until: Option<(Instant, Deadline)>,
    /// Start the message deadline at the first byte read.
    arm_on_first_byte: bool,
}

impl core::fmt::Debug for Socket<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Socket")
            .field("state", &self.tcp.state())
            .field("remote", &self.tcp.remote_endpoint())
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl<'a> Socket<'a> {
    /// Wraps a socket and applies the TCP-level settings of `timeouts`
    /// (socket timeout, keep-alive).
    ///
    /// Also turns Nagle's algorithm off: tinyproto flushes at the end of
    /// every message and then waits for an answer, so Nagle only holds back
    /// the tail of each send buffer until the peer's delayed ACK (with a
    /// 2 KiB send buffer, 1 MiB took 3 s instead of 40 ms on the in-memory
    /// link). Turn it back on with `tcp_mut().set_nagle_enabled(true)`.
    pub fn new(mut tcp: TcpSocket<'a>, timeouts: Timeouts) -> Self {
        tcp.set_timeout(timeouts.tcp);
        tcp.set_keep_alive(timeouts.keep_alive);
        tcp.set_nagle_enabled(false);
        Self {
            tcp,
            timeouts,
            deadline: None,
            wait_until: None,
            arm_on_first_byte: false,
        }
    }

    /// The embassy-net socket.
    pub fn tcp(&self) -> &TcpSocket<'a> {
        &self.tcp
    }

    /// The embassy-net socket, mutably (for options; moving bytes through it
    /// puts the tinyproto connection out of step).
    pub fn tcp_mut(&mut self) -> &mut TcpSocket<'a> {
        &mut self.tcp
    }

    /// The time limits in force.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Replaces the time limits (and the TCP-level settings).
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.tcp.set_timeout(timeouts.tcp);
        self.tcp.set_keep_alive(timeouts.keep_alive);
        self.timeouts = timeouts;
    }

    /// The peer's address, while connected.
    pub fn remote_endpoint(&self) -> Option<IpEndpoint> {
        self.tcp.remote_endpoint()
    }

    /// An exchange starts now and must end within `which`'s limit.
    pub(crate) fn begin_exchange(&mut self, which: Deadline) {
        let limit = match which {
            Deadline::Greeting => self.timeouts.greeting,
            Deadline::Connect => self.timeouts.connect,
            Deadline::Close => self.timeouts.close,
            Deadline::Message | Deadline::Receive | Deadline::Idle => self.timeouts.message,
        };
        self.deadline = Some((Instant::now() + limit, which));
        self.wait_until = None;
        self.arm_on_first_byte = false;
    }

    /// Waits for the peer to start an exchange (until `wait_until`, if any,
    /// which fails with its [`Deadline`]); its first byte starts the message
    /// deadline.
    pub(crate) fn await_exchange(&mut self, wait_until: Option<(Instant, Deadline)>) {
        self.deadline = None;
        self.wait_until = wait_until;
        self.arm_on_first_byte = true;
    }

    /// No exchange in progress: no deadline.
    pub(crate) fn end_exchange(&mut self) {
        self.deadline = None;
        self.wait_until = None;
        self.arm_on_first_byte = false;
    }

    fn limit(&self) -> Option<(Instant, Deadline)> {
        self.deadline.or(self.wait_until)
    }

    /// Closes in order: FIN after our data, waits (up to
    /// [`Timeouts::close`]) for it to be acknowledged and for the peer's FIN,
    /// discarding whatever the peer still sends. Past the deadline the
    /// connection is aborted with an RST. Data is never lost silently: an
    /// `Ok` means the peer acknowledged everything written.
    pub async fn close(&mut self) -> Result<(), NetError> {
        let limit = Some((Instant::now() + self.timeouts.close, Deadline::Close));
        self.end_exchange();
        self.tcp.close();
        let flushed = bounded(limit, self.tcp.flush()).await;
        if flushed.is_ok() {
            let mut scratch = [0u8; 64];
            // The peer's FIN (Ok(0)) or a reset ends the wait.
            while let Ok(n) = bounded(limit, self.tcp.read(&mut scratch)).await {
                if n == 0 {
                    break;
                }
            }
        }
        trace!("close: {:?}, state {:?}", flushed, self.tcp.state());
        if flushed.is_err() {
            debug!("close timed out: aborting");
            self.abort().await;
        }
        flushed
    }

    /// Resets the connection (RST) and waits briefly (100 ms at most) for
    /// the RST to leave. The socket is closed afterwards and may connect or
    /// listen again.
    pub async fn abort(&mut self) {
        self.end_exchange();
        self.tcp.abort();
        let rst = Some((Instant::now() + Duration::from_millis(100), Deadline::Close));
        let _ = bounded(rst, self.tcp.flush()).await;
    }
}

/// Races `f` against `limit`.
pub(crate) async fn bounded<T, E: Into<NetError>>(
    limit: Option<(Instant, Deadline)>,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, NetError> {
    match limit {
        None => f.await.map_err(Into::into),
        Some((at, which)) => match select(f, Timer::at(at)).await {
            Either::First(r) => r.map_err(Into::into),
            Either::Second(()) => Err(NetError::TimedOut(which)),
        },
    }
}

impl ErrorType for Socket<'_> {
    type Error = NetError;
}

impl Read for Socket<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, NetError> {
        let n = bounded(self.limit(), self.tcp.read(buf)).await?;
        if n > 0 && self.arm_on_first_byte {
            self.begin_exchange(Deadline::Message);
        }
        Ok(n)
    }
}

impl ReadReady for Socket<'_> {
    /// True when bytes of the peer's wait in the receive buffer. (Unlike
    /// `TcpSocket`'s own, a peer that closed with nothing waiting is not
    /// "ready" here: the next read says so.)
    fn read_ready(&mut self) -> Result<bool, NetError> {
        Ok(self.tcp.can_recv())
    }
}

impl Write for Socket<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, NetError> {
        bounded(self.limit(), self.tcp.write(buf)).await
    }

    async fn flush(&mut self) -> Result<(), NetError> {
        bounded(self.limit(), self.tcp.flush()).await
    }
}
