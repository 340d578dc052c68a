//! The server: N caller-owned socket slots serving N connections at once,
//! each driven by a [`Handler`], plus K reserve sockets that answer peers
//! beyond them with 0xFE.
//!
//! embassy-net has no listen backlog: a connection arriving while no socket
//! listens on the port is reset by the stack. So while all N slots are busy
//! the K reserve sockets listen, and whoever they accept is refused with the
//! single byte 0xFE (`tinyproto::asynch::refuse_connection_limit`) and closed.
//! K peers arriving at once beyond the slots all read 0xFE; a (K+1)-th
//! arriving while every reserve is still refusing is reset by the stack.

use core::convert::Infallible;
use core::future::Future;
use core::pin::{pin, Pin};
use core::task::{Context, Poll};

use embassy_futures::join::{join, join_array};
use embassy_futures::poll_once;
use embassy_futures::select::{select, select3, Either, Either3};
use embassy_net::tcp::{AcceptError, TcpSocket};
use embassy_net::Stack;
use embassy_sync::blocking_mutex::raw::{NoopRawMutex, RawMutex};
use embassy_sync::signal::Signal;
use embassy_sync::watch::{Receiver, Sender, Watch};
use embassy_time::{Duration, Timer};
use tinyproto::{CONNECTION_LIMIT_REFUSAL, MAX_MESSAGE_LEN};

use crate::error::{Deadline, Error};
use crate::out_of_line::OutOfLine;
use crate::session::{ConnInfo, Session};
use crate::socket::{after, Socket, Timeouts};
use crate::Connection;

/// What a handler says after each hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Flow {
    /// Go on serving this connection.
    Continue,
    /// Close this connection (in order): [`Ended::HandlerClosed`].
    Close,
    /// Close this connection (in order) because of this error, a failed
    /// `session.transmit` say: [`Ended::HandlerFailed`] keeps it.
    Fail(Error),
}

impl Flow {
    /// `Continue` on success, `Fail` with the error otherwise: the flow
    /// after a send, `Flow::after(session.transmit(reply).await)`.
    pub fn after<T>(result: Result<T, Error>) -> Self {
        match result {
            Ok(_) => Flow::Continue,
            Err(e) => Flow::Fail(e),
        }
    }

    /// How the connection ends after this flow, or `None` to go on.
    fn ended(self) -> Option<Ended> {
        match self {
            Flow::Continue => None,
            Flow::Close => Some(Ended::HandlerClosed),
            Flow::Fail(e) => Some(Ended::HandlerFailed(e)),
        }
    }
}

/// Why a connection ended, as `post_loop` and `conn_shutdown` are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Ended {
    /// The peer closed between messages: the normal end.
    PeerClosed,
    /// A hook returned [`Flow::Close`].
    HandlerClosed,
    /// A hook returned [`Flow::Fail`] with this error.
    HandlerFailed(Error),
    /// The server was stopped ([`serve_until`]) between messages.
    Stopped,
    /// The connection failed: a protocol error, a reset, or a deadline
    /// (`Error::Io(NetError::TimedOut(Deadline::Idle | Deadline::Message | ..))`).
    Failed(Error),
}

/// How a slot takes a message whose length was announced, decided by
/// [`Handler::message_announced`] before any of its payload moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Take {
    /// Whole, into the slot's message buffer, then to
    /// [`Handler::transmission_received`].
    Whole,
    /// Streamed through the slot's buffer to
    /// [`Handler::transmission_chunk`]: for
    /// messages larger than memory (a firmware image into flash).
    Chunks,
    /// Answer 0x00: the peer keeps its message and the connection goes on.
    Reject,
}

/// The application side of a server connection: the hooks of the std adapter
/// and of the Python reference, async. Each slot has a handler of its own
/// (`serve` takes one per slot), so hooks take `&mut self` and per-connection
/// state is a plain field (reset it in `conn_init`).
///
/// **One value shared by all slots**: implement `Handler` for a reference,
/// `impl Handler for &Shared`, and give every slot that reference,
/// `[&shared; N]`. The hooks then reach `Shared` through `&mut &Shared`, so
/// what they change sits in `Cell`s (or an array indexed by
/// [`ConnInfo::slot`]): all slots run in one task, no lock is needed.
///
/// ```
/// use core::cell::Cell;
/// use tinyproto_embassy::{Flow, Handler, Session};
///
/// /// Counts the messages of every connection, on every slot.
/// #[derive(Default)]
/// struct Counter {
///     messages: Cell<u32>,
/// }
///
/// impl Handler for &Counter {
///     async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
///         self.messages.set(self.messages.get() + 1);
///         Flow::after(session.transmit(msg).await)
///     }
/// }
///
/// let counter = Counter::default();
/// let handlers = [&counter, &counter]; // serve(stack, &config, slots, reserves, handlers)
/// # fn is_handler<H: Handler>(_: &[H]) {}
/// # is_handler(&handlers);
/// ```
///
/// Order per connection: `conn_init` → greeting → `pre_loop` → (message
/// announced → `message_announced` → `transmission_received` (whole) or
/// `transmission_chunk`* `transmission_complete` (chunks) or nothing
/// (rejected) → `loop_pass`)* → `post_loop` → orderly close →
/// `conn_shutdown`. `post_loop` runs only if the greeting succeeded;
/// `conn_shutdown` always runs. A hook that fails to reply in time is bound
/// by the same deadlines (its `Session` calls carry them).
///
/// These are `async fn`s in a trait: their futures are not `Send`, which is
/// what single-threaded embassy executors want.
#[allow(async_fn_in_trait)]
pub trait Handler {
    /// A peer connected on a slot (before the greeting).
    /// [`Flow::Close`] closes it at once.
    async fn conn_init(&mut self, info: &ConnInfo) -> Flow {
        let _ = info;
        Flow::Continue
    }

    /// The greeting succeeded; the loop is about to start.
    async fn pre_loop(&mut self, session: &mut Session<'_, '_>) -> Flow {
        let _ = session;
        Flow::Continue
    }

    /// A message of `len` bytes was announced: decide how to take it before
    /// any of its payload moves. `capacity` is the most the slot takes whole
    /// (its message buffer, capped by [`ServerConfig::max_message_len`]).
    /// By default: [`Take::Whole`] if it fits, [`Take::Reject`] (0x00, the
    /// connection goes on) otherwise. [`Take::Chunks`] streams it through
    /// the slot's message buffer to `transmission_chunk`, whatever its size
    /// (a firmware image into flash through 1 KiB).
    async fn message_announced(&mut self, info: &ConnInfo, len: u32, capacity: u32) -> Take {
        let _ = info;
        if len <= capacity {
            Take::Whole
        } else {
            Take::Reject
        }
    }

    /// A whole message arrived. Reply through `session.transmit`.
    async fn transmission_received(
        &mut self,
        session: &mut Session<'_, '_>,
        message: &[u8],
    ) -> Flow;

    /// The next chunk of a message taken [`Take::Chunks`], in order, at most
    /// the slot's message buffer long. [`Flow::Close`] abandons the message
    /// and closes the connection. If the message breaks off, `post_loop` is
    /// told why and `transmission_complete` never runs: discard what came.
    async fn transmission_chunk(&mut self, info: &ConnInfo, chunk: &[u8]) -> Flow {
        let _ = (info, chunk);
        Flow::Continue
    }

    /// All `len` bytes of a message taken [`Take::Chunks`] arrived.
    async fn transmission_complete(&mut self, session: &mut Session<'_, '_>, len: u32) -> Flow {
        let _ = (session, len);
        Flow::Continue
    }

    /// Called after each message, and every
    /// [`ServerConfig::loop_pass_interval`] while the connection is quiet.
    async fn loop_pass(&mut self, session: &mut Session<'_, '_>) -> Flow {
        let _ = session;
        Flow::Continue
    }

    /// The loop ended (the connection is still open: a last message may go).
    async fn post_loop(&mut self, session: &mut Session<'_, '_>, ended: &Ended) {
        let _ = (session, ended);
    }

    /// The connection is closed and its slot is about to listen again.
    async fn conn_shutdown(&mut self, info: &ConnInfo, ended: &Ended) {
        let _ = (info, ended);
    }
}

/// Settings of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServerConfig {
    /// TCP port to listen on (not 0: a socket cannot listen there, and
    /// the server then serves nothing).
    pub port: u16,
    /// Deadlines of each connection. `idle` closes quiet connections.
    pub timeouts: Timeouts,
    /// Longest message accepted (besides the slot's message buffer, which
    /// always bounds it); longer ones are answered 0x00.
    pub max_message_len: u32,
    /// Call `loop_pass` this often while a connection is quiet (`None`:
    /// only after each message).
    pub loop_pass_interval: Option<Duration>,
}

impl ServerConfig {
    /// Defaults: [`Timeouts::DEFAULT`] with a 60 s idle timeout, no extra
    /// message cap, `loop_pass` only after messages.
    pub const fn new(port: u16) -> Self {
        let mut timeouts = Timeouts::DEFAULT;
        timeouts.idle = Some(Duration::from_secs(60));
        Self {
            port,
            timeouts,
            max_message_len: MAX_MESSAGE_LEN,
            loop_pass_interval: None,
        }
    }
}

/// The storage of one connection slot: TCP receive and send buffers, and
/// the buffer whole messages are received into (its size is the largest
/// message the server takes).
#[derive(Debug)]
pub struct Slot<'b> {
    rx: &'b mut [u8],
    tx: &'b mut [u8],
    message: &'b mut [u8],
}

impl<'b> Slot<'b> {
    /// A slot over caller-owned buffers.
    pub fn new(rx: &'b mut [u8], tx: &'b mut [u8], message: &'b mut [u8]) -> Self {
        Self { rx, tx, message }
    }
}

/// Owned buffers for one [`Slot`], for `static`s or the stack.
#[derive(Debug)]
pub struct SlotStorage<const RX: usize, const TX: usize, const MSG: usize> {
    rx: [u8; RX],
    tx: [u8; TX],
    message: [u8; MSG],
}

impl<const RX: usize, const TX: usize, const MSG: usize> SlotStorage<RX, TX, MSG> {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        Self {
            rx: [0; RX],
            tx: [0; TX],
            message: [0; MSG],
        }
    }

    /// The slot over these buffers.
    pub fn slot(&mut self) -> Slot<'_> {
        Slot::new(&mut self.rx, &mut self.tx, &mut self.message)
    }
}

impl<const RX: usize, const TX: usize, const MSG: usize> Default for SlotStorage<RX, TX, MSG> {
    fn default() -> Self {
        Self::new()
    }
}

/// Buffers of the reserve socket that refuses peers beyond the limit; a few
/// dozen bytes each are plenty (it sends one byte).
#[derive(Debug)]
pub struct Reserve<'b> {
    rx: &'b mut [u8],
    tx: &'b mut [u8],
}

impl<'b> Reserve<'b> {
    /// A reserve over caller-owned buffers. `tx` must hold at least the one
    /// byte it sends (0xFE); with an empty one the peer is closed on
    /// without it.
    pub fn new(rx: &'b mut [u8], tx: &'b mut [u8]) -> Self {
        Self { rx, tx }
    }
}

/// Owned buffers for a [`Reserve`].
#[derive(Debug)]
pub struct ReserveStorage {
    rx: [u8; 64],
    tx: [u8; 64],
}

impl ReserveStorage {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        Self {
            rx: [0; 64],
            tx: [0; 64],
        }
    }

    /// The reserve over these buffers.
    pub fn reserve(&mut self) -> Reserve<'_> {
        Reserve::new(&mut self.rx, &mut self.tx)
    }
}

impl Default for ReserveStorage {
    fn default() -> Self {
        Self::new()
    }
}

/// What the reserve loops watch: how many slots hold a connection, and
/// whether the server stops.
#[derive(Debug, Clone, Copy, Default)]
struct Pool {
    busy: usize,
    stopping: bool,
}

/// How a slot loop learns that the server stops: a receiver of
/// [`serve_until`]'s stop `Watch`, or, in [`serve`], [`NeverStops`] (so an
/// image that never stops carries no stop code: about 0.9 KiB of flash).
trait Stopping {
    /// True once the server stops.
    fn is_stopping(&self) -> bool;
    /// Completes once the server stops: the waiting future itself, no
    /// async layer around it.
    fn stopping(&mut self) -> impl Future<Output = ()>;
}

impl<const N: usize> Stopping for Receiver<'_, NoopRawMutex, (), N> {
    fn is_stopping(&self) -> bool {
        // Any value in the stop `Watch` means "stop".
        self.contains_value()
    }

    fn stopping(&mut self) -> impl Future<Output = ()> {
        self.get()
    }
}

/// The stop of [`serve`]: none.
struct NeverStops;

impl Stopping for NeverStops {
    fn is_stopping(&self) -> bool {
        false
    }

    fn stopping(&mut self) -> impl Future<Output = ()> {
        core::future::pending()
    }
}

/// Serves tinyproto on `config.port` with one connection per slot, all
/// concurrently in the calling task, and with the `reserves` answering 0xFE
/// to peers beyond them (`[]` for none; K reserves refuse K peers arriving
/// at once, none of them reset). Never returns: to stop it gracefully use
/// [`serve_until`]; dropping the future drops every connection without a
/// close.
///
/// `handlers` has one handler per slot (see [`Handler`]). Nothing needs to
/// be `'static`: the stack and the buffers are borrowed.
pub async fn serve<H: Handler, const N: usize, const K: usize>(
    stack: Stack<'_>,
    config: &ServerConfig,
    slots: [Slot<'_>; N],
    reserves: [Reserve<'_>; K],
    handlers: [H; N],
) -> Infallible {
    let pool = Watch::new_with(Pool::default());
    let no_stop = || Some(NeverStops);
    serve_slots(stack, config, slots, reserves, handlers, &pool, no_stop).await;
    // Only reached with no slot and no reserve.
    core::future::pending().await
}

/// [`serve`], until the application signals `stop` (from this task, another
/// task or an interrupt, as its mutex type allows): then no new connection
/// is accepted, each connection finishes the message in flight, its hooks
/// run (`post_loop` sees [`Ended::Stopped`]), its socket closes in order,
/// and `serve_until` returns.
pub async fn serve_until<H: Handler, M: RawMutex, const N: usize, const K: usize>(
    stack: Stack<'_>,
    config: &ServerConfig,
    slots: [Slot<'_>; N],
    reserves: [Reserve<'_>; K],
    handlers: [H; N],
    stop: &Signal<M, ()>,
) {
    // A `Signal` has one waiter and its `wait` takes the value, while N
    // slot loops and K reserve loops wait for the stop at once: one arm
    // below passes it on to two `Watch`es, which any number of receivers
    // see. Two, because a `Watch`'s receiver count is a const parameter and
    // `N + K` cannot be written: the slots watch `stopped` (a value there
    // means "stop"), the reserves watch `pool`.
    let stopped = Watch::<NoopRawMutex, (), N>::new();
    let pool = Watch::new_with(Pool::default());
    let pass_on_stop = async {
        stop.wait().await;
        info!("tinyproto server stopping");
        stopped.sender().send(());
        pool.sender().send_modify(|pool| {
            if let Some(pool) = pool {
                pool.stopping = true;
            }
        });
    };
    let stops = || stopped.receiver();
    let serving = serve_slots(stack, config, slots, reserves, handlers, &pool, stops);
    // Without slots the loops end at once: then only a stop ends this.
    join(serving, pass_on_stop).await;
}

/// The slot loops and the reserve loops of a server, all in this future;
/// `stops` gives each slot its view of the stop.
async fn serve_slots<H: Handler, S: Stopping, const N: usize, const K: usize>(
    stack: Stack<'_>,
    config: &ServerConfig,
    slots: [Slot<'_>; N],
    reserves: [Reserve<'_>; K],
    handlers: [H; N],
    pool: &Watch<NoopRawMutex, Pool, K>,
    mut stops: impl FnMut() -> Option<S>,
) {
    info!("tinyproto server on port {}, {} slots", config.port, N);
    // Slot i gets handler i (both arrays have N entries).
    let mut handlers = handlers.into_iter();
    let mut next = 0;
    let loops = slots.map(|slot| {
        let index = next;
        next += 1;
        serve_slot(
            stack,
            config,
            index,
            slot,
            handlers.next(),
            stops(),
            pool.sender(),
        )
    });
    let refusing =
        reserves.map(|reserve| serve_reserve(stack, config, reserve, pool.receiver(), N));
    join(join_array(loops), join_array(refusing)).await;
}

async fn serve_slot<H: Handler, S: Stopping, const K: usize>(
    stack: Stack<'_>,
    config: &ServerConfig,
    index: usize,
    slot: Slot<'_>,
    handler: Option<H>,
    stop: Option<S>,
    pool: Sender<'_, NoopRawMutex, Pool, K>,
) {
    // Both are there: one handler and one receiver were made per slot.
    let (Some(mut handler), Some(mut stop)) = (handler, stop) else {
        return;
    };
    let Slot { rx, tx, message } = slot;
    while !stop.is_stopping() {
        let mut socket = Socket::new(TcpSocket::new(stack, rx, tx), config.timeouts);
        match select(socket.tcp_mut().accept(config.port), stop.stopping()).await {
            Either::First(Ok(())) => {}
            // A fresh socket's listen fails only for port 0 (`InvalidPort`):
            // it would fail again, so the slot stops rather than retry. Any
            // other failure (a peer's reset, with an embassy-net that reports
            // one during the handshake) comes after a peer's packets, so
            // listening again on a fresh socket cannot spin.
            Either::First(Err(e)) => {
                warn!("slot {}: listen failed: {:?}", index, e);
                if e == AcceptError::InvalidPort {
                    break;
                }
                continue;
            }
            // Stopping: no new connection on this slot.
            Either::Second(()) => break,
        }
        count_busy(&pool, 1);
        let info = ConnInfo {
            slot: index,
            remote: socket.remote_endpoint(),
        };
        debug!("slot {}: connection from {:?}", index, info.remote);
        let mut conn = Connection::new(socket);
        conn.set_max_message_len(config.max_message_len);
        // The connection's life, its loop and a message's take are each
        // polled out of line: nested inline, every await of the inner ones
        // would carry the outer ones' resumption (352 B of flash in all).
        let ended = OutOfLine::new(pin!(run_connection(
            &mut conn,
            message,
            config,
            &info,
            &mut handler,
            &mut stop
        )))
        .await;
        let closed = conn.get_mut().close().await;
        debug!("slot {}: ended {:?}, close {:?}", index, ended, closed);
        handler.conn_shutdown(&info, &ended).await;
        drop(conn);
        count_busy(&pool, -1);
    }
}

/// A slot took (`+1`) or gave back (`-1`) a connection: one closure, so
/// one copy of `send_modify` in the image.
fn count_busy<const K: usize>(pool: &Sender<'_, NoopRawMutex, Pool, K>, change: isize) {
    pool.send_modify(|pool| {
        if let Some(pool) = pool {
            pool.busy = pool.busy.wrapping_add_signed(change);
        }
    });
}

async fn run_connection<H: Handler, S: Stopping>(
    conn: &mut Connection<'_>,
    message: &mut [u8],
    config: &ServerConfig,
    info: &ConnInfo,
    handler: &mut H,
    stop: &mut S,
) -> Ended {
    if let Some(ended) = handler.conn_init(info).await.ended() {
        return ended;
    }
    let mut session = Session::new(conn, *info);
    if let Err(e) = OutOfLine::new(pin!(session.greet_now())).await {
        return Ended::Failed(e);
    }
    let ended = OutOfLine::new(pin!(serve_loop(
        &mut session,
        message,
        config,
        handler,
        stop
    )))
    .await;
    handler.post_loop(&mut session, &ended).await;
    ended
}

/// [`ServerConfig::loop_pass_interval`]'s timer, or never ready without
/// one: a plain future, no async block (whose state machine costs more).
struct Tick(Option<Timer>);

impl Future for Tick {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.get_mut().0 {
            Some(timer) => Pin::new(timer).poll(cx),
            None => Poll::Pending,
        }
    }
}

/// What the loop of a connection waits for between messages.
enum Event {
    /// The length of the next message (or why none came).
    Announced(Result<u32, Error>),
    /// [`ServerConfig::loop_pass_interval`] passed.
    Tick,
}

async fn serve_loop<H: Handler, S: Stopping>(
    session: &mut Session<'_, '_>,
    message: &mut [u8],
    config: &ServerConfig,
    handler: &mut H,
    stop: &mut S,
) -> Ended {
    if let Some(ended) = handler.pre_loop(session).await.ended() {
        return ended;
    }
    // The idle deadline, from the last message on.
    let mut idle_at = config.timeouts.idle.map(after);
    loop {
        let idle = idle_at.map(|at| (at, Deadline::Idle));
        let tick = Tick(
            config
                .loop_pass_interval
                .map(|every| Timer::at(after(every))),
        );
        // Up to the idle deadline for the next length's first byte, then
        // the message deadline (the session is greeted: the core's
        // `next_length` itself, one future layer fewer).
        session.arm_receive(idle);
        let event = match select3(session.conn.next_length(), stop.stopping(), tick).await {
            Either3::First(announced) => Event::Announced(announced),
            // A length already half in is a message in flight: it is
            // finished first, whatever else came, under the deadline its
            // first byte started (the exchange stays armed).
            _ if session.conn.is_in_progress() => {
                Event::Announced(session.conn.next_length().await)
            }
            Either3::Second(()) => return Ended::Stopped,
            Either3::Third(()) => Event::Tick,
        };
        if let Event::Announced(announced) = event {
            let taken = match announced {
                Ok(len) => OutOfLine::new(pin!(take_message(session, message, len, handler))).await,
                Err(e) => {
                    session.conn.get_mut().end_exchange();
                    Err(e)
                }
            };
            match taken {
                Ok(flow) => {
                    if let Some(ended) = flow.ended() {
                        return ended;
                    }
                }
                Err(Error::TooLarge { len, capacity }) => info!(
                    "slot {}: refused a message of {} bytes (limit {})",
                    session.info.slot, len, capacity
                ),
                Err(Error::Closed) => return Ended::PeerClosed,
                // Failures, and the idle deadline (`Deadline::Idle`).
                Err(e) => {
                    info!("slot {}: {:?}", session.info.slot, e);
                    return Ended::Failed(e);
                }
            }
            idle_at = config.timeouts.idle.map(after);
        }
        if let Some(ended) = handler.loop_pass(session).await.ended() {
            return ended;
        }
        if stop.is_stopping() {
            return Ended::Stopped;
        }
    }
}

/// Takes the message of `len` bytes whose length was just read, as the
/// handler decides, under the exchange `next_length` armed; ends that
/// exchange, then hands the message to the handler.
async fn take_message<H: Handler>(
    session: &mut Session<'_, '_>,
    message: &mut [u8],
    len: u32,
    handler: &mut H,
) -> Result<Flow, Error> {
    let capacity = session.conn.machine().whole_capacity(message.len());
    match handler
        .message_announced(&session.info, len, capacity)
        .await
    {
        take @ (Take::Whole | Take::Chunks) => {
            // A whole message goes through the chunked reader too: one read
            // path in the image, not two.
            let whole = take == Take::Whole;
            let info = &session.info;
            let read = read_message(session.conn, message, whole, capacity, info, handler).await;
            session.conn.get_mut().end_exchange();
            match read? {
                Read::Whole(received) => Ok(handler
                    .transmission_received(session, &message[..received])
                    .await),
                Read::Streamed => Ok(handler.transmission_complete(session, len).await),
                // The handler stopped the message half way: the connection
                // is out of step and closes.
                Read::Stopped(stopped) => Ok(stopped),
            }
        }
        Take::Reject => {
            let rejected = session.conn.reject().await;
            session.conn.get_mut().end_exchange();
            rejected?;
            debug!(
                "slot {}: rejected a message of {} bytes",
                session.info.slot, len
            );
            Ok(Flow::Continue)
        }
    }
}

/// How [`read_message`] ended.
enum Read {
    /// The whole message is in the buffer: its length.
    Whole(usize),
    /// All of it went to the handler's `transmission_chunk`.
    Streamed,
    /// The handler stopped it half way with this flow.
    Stopped(Flow),
}

/// Reads the accepted message through `buffer`: `whole`, into it (at most
/// `capacity` bytes, no more than `buffer` holds; over `capacity` it is
/// answered 0x00: `Error::TooLarge`, as for the core's `receive`);
/// otherwise chunk by chunk to the handler's `transmission_chunk`, which
/// may stop it.
async fn read_message<H: Handler>(
    conn: &mut Connection<'_>,
    buffer: &mut [u8],
    whole: bool,
    capacity: u32,
    info: &ConnInfo,
    handler: &mut H,
) -> Result<Read, Error> {
    // A streamed message is not held: the configured cap on whole messages
    // does not apply (the core caps whole receives only).
    let limit = if whole { capacity } else { MAX_MESSAGE_LEN };
    let mut incoming = conn.begin_receive(limit).await?;
    let mut filled = 0;
    loop {
        let into = if whole { filled } else { 0 };
        let n = incoming
            .read(buffer.get_mut(into..).unwrap_or_default())
            .await?;
        if n == 0 {
            return Ok(if whole {
                Read::Whole(filled)
            } else {
                Read::Streamed
            });
        }
        if whole {
            filled += n;
        } else {
            let chunk = buffer.get(..n).unwrap_or_default();
            match handler.transmission_chunk(info, chunk).await {
                Flow::Continue => {}
                stopped => return Ok(Read::Stopped(stopped)),
            }
        }
    }
}

async fn serve_reserve<const K: usize>(
    stack: Stack<'_>,
    config: &ServerConfig,
    reserve: Reserve<'_>,
    pool: Option<Receiver<'_, NoopRawMutex, Pool, K>>,
    limit: usize,
) {
    // There: one receiver was made per reserve.
    let Some(mut pool) = pool else {
        return;
    };
    let Reserve { rx, tx } = reserve;
    // Listen only while every slot is busy.
    while !pool_at(&mut pool, limit, true).await.stopping {
        // Made as a slot makes its socket: one copy of the set-up and the
        // drop in the image.
        let mut socket = Socket::new(TcpSocket::new(stack, rx, tx), config.timeouts);
        let freed = pool_at(&mut pool, limit, false);
        match select(socket.tcp_mut().accept(config.port), freed).await {
            Either::First(Ok(())) => {
                info!(
                    "at the limit of {}: refusing {:?}",
                    limit,
                    socket.remote_endpoint()
                );
                // A socket just accepted has an empty send buffer, and
                // embassy-net's write is ready whenever there is room (or
                // fails if the peer is gone): one poll puts the one byte
                // (0xFE, what the core's `refuse_connection_limit` sends)
                // there, with no wait to bound (32 B less flash than
                // awaiting it). The orderly close flushes it ahead of our FIN.
                let refused = match poll_once(socket.tcp_mut().write(&CONNECTION_LIMIT_REFUSAL)) {
                    Poll::Ready(written) => Some(written),
                    Poll::Pending => None,
                };
                let closed = socket.close().await;
                debug!("refusal: {:?}, close {:?}", refused, closed);
            }
            // Port 0 stops it, as for a slot; anything else listens again.
            Either::First(Err(e)) => {
                warn!("reserve: listen failed: {:?}", e);
                if e == AcceptError::InvalidPort {
                    break;
                }
            }
            // A slot listens again, or the server stops: stop listening here.
            Either::Second(_) => {}
        }
    }
}

/// The pool once every slot is busy (`full`) or not, or the server stops:
/// one closure for both waits, so one copy of `get_and` in the image.
fn pool_at<'r, 'w: 'r, const K: usize>(
    pool: &'r mut Receiver<'w, NoopRawMutex, Pool, K>,
    limit: usize,
    full: bool,
) -> impl core::future::Future<Output = Pool> + use<'r, 'w, K> {
    pool.get_and(move |p| (p.busy >= limit) == full || p.stopping)
}
