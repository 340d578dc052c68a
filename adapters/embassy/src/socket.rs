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

use core::future::{poll_fn, Future};
use core::pin::{pin, Pin};
use core::task::{Context, Poll};

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
        self.deadline = Some((after(limit), which));
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

    /// No exchange in progress: no deadline. One copy in the image: nine
    /// places call it.
    #[inline(never)]
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
        let mut limit = Some((after(self.timeouts.close), Deadline::Close));
        self.end_exchange();
        self.tcp.close();
        let mut scratch = [0u8; 64];
        let mut flushed = Ok(());
        // One wait at a time, in one loop (one socket future in the state):
        // the flush, then the peer's data up to its FIN (Ok(0)) or a reset,
        // or after a failed flush the RST leaving (as `abort`).
        let mut phase = Close::Flush;
        loop {
            let op = match phase {
                Close::Drain => Transfer::Read(&mut scratch),
                Close::Flush | Close::Reset => Transfer::Flush,
            };
            let moved = self.transfer(op, limit).await;
            phase = match (phase, moved) {
                (Close::Flush, Ok(_)) => Close::Drain,
                (Close::Flush, Err(e)) => {
                    flushed = Err(e);
                    debug!("close: {:?}, state {:?}: aborting", e, self.tcp.state());
                    self.tcp.abort();
                    limit = Some((after(ABORT_WAIT), Deadline::Close));
                    Close::Reset
                }
                (Close::Drain, Ok(n)) if n > 0 => Close::Drain,
                _ => break,
            };
        }
        trace!("close: {:?}", flushed);
        flushed
    }

    /// Resets the connection (RST) and waits briefly (100 ms at most) for
    /// the RST to leave. The socket is closed afterwards and may connect or
    /// listen again.
    pub async fn abort(&mut self) {
        self.end_exchange();
        self.tcp.abort();
        let rst = Some((after(ABORT_WAIT), Deadline::Close));
        let _ = self.transfer(Transfer::Flush, rst).await;
    }

    /// One read, write or flush of the TCP socket raced against `limit`:
    /// every transfer of the socket goes through this one future, whose
    /// poll is the same code for all of them.
    fn transfer<'s, 'b>(
        &'s mut self,
        op: Transfer<'b>,
        limit: Option<(Instant, Deadline)>,
    ) -> Bounded<'s, 'b, 'a> {
        Bounded {
            timer: limit.map(|(at, which)| (Timer::at(at), which)),
            socket: self,
            op,
        }
    }
}

/// The instant `wait` from now: every deadline is armed through this one
/// function, so the image has one copy of the time driver's `now` and of
/// the addition's overflow check (inlined at each deadline they cost
/// more).
#[inline(never)]
pub(crate) fn after(wait: Duration) -> Instant {
    Instant::now() + wait
}

/// How long an abort waits for its RST to leave.
const ABORT_WAIT: Duration = Duration::from_millis(100);

/// The waits of [`Socket::close`], in order.
#[derive(Clone, Copy)]
enum Close {
    Flush,
    Drain,
    Reset,
}

/// What [`Socket::transfer`] moves.
enum Transfer<'b> {
    Read(&'b mut [u8]),
    Write(&'b [u8]),
    Flush,
}

/// The future of [`Socket::transfer`]: the operation first, then its timer.
///
/// Each poll builds the embassy-net future of the operation afresh and polls
/// it once. That is the same as dropping it and calling again, which moves
/// no bytes (those futures are cancel-safe and keep no state of their own:
/// the stack keeps the waker).
struct Bounded<'s, 'b, 'a> {
    socket: &'s mut Socket<'a>,
    op: Transfer<'b>,
    timer: Option<(Timer, Deadline)>,
}

impl Future for Bounded<'_, '_, '_> {
    type Output = Result<usize, NetError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let tcp = &mut this.socket.tcp;
        let moved = match &mut this.op {
            Transfer::Read(buf) => pin!(tcp.read(buf)).poll(cx),
            Transfer::Write(buf) => pin!(tcp.write(buf)).poll(cx),
            Transfer::Flush => pin!(tcp.flush()).poll(cx).map(|r| r.map(|()| 0)),
        };
        if let Poll::Ready(r) = moved {
            let n = r?;
            if n > 0 && this.socket.arm_on_first_byte && matches!(this.op, Transfer::Read(_)) {
                this.socket.begin_exchange(Deadline::Message);
            }
            return Poll::Ready(Ok(n));
        }
        if let Some((timer, which)) = &mut this.timer {
            if Pin::new(timer).poll(cx).is_ready() {
                return Poll::Ready(Err(NetError::TimedOut(*which)));
            }
        }
        Poll::Pending
    }
}

impl ErrorType for Socket<'_> {
    type Error = NetError;
}

impl<'a> Read for Socket<'a> {
    fn read<'s, 'b>(
        &'s mut self,
        buf: &'b mut [u8],
    ) -> impl Future<Output = Result<usize, NetError>> + use<'s, 'b, 'a> {
        let limit = self.limit();
        self.transfer(Transfer::Read(buf), limit)
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

impl<'a> Write for Socket<'a> {
    fn write<'s, 'b>(
        &'s mut self,
        buf: &'b [u8],
    ) -> impl Future<Output = Result<usize, NetError>> + use<'s, 'b, 'a> {
        let limit = self.limit();
        self.transfer(Transfer::Write(buf), limit)
    }

    fn flush(&mut self) -> impl Future<Output = Result<(), NetError>> {
        let limit = self.limit();
        let mut flushed = self.transfer(Transfer::Flush, limit);
        poll_fn(move |cx| Pin::new(&mut flushed).poll(cx).map(|r| r.map(drop)))
    }
}
