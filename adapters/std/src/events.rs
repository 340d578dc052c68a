//! Connections served on a few event threads, for handlers that never
//! block: the [`EventHandler`] hooks, the [`EventConn`] they see, and the
//! threads that drive the core's sans-IO [`Machine`] over non-blocking
//! sockets.
//!
//! A thread per connection blocks three times per request and reply (the
//! protocol has three exchanges where raw TCP has one), and each block is a
//! context switch. Here each event thread owns a readiness set (epoll,
//! kqueue, through `mio`) and a share of the connections; a connection's
//! state is its machine, its buffers and the task in flight, and a hook
//! runs on the event thread as soon as its message is whole. A hook
//! therefore must not wait: [`EventConn::send`] queues a reply, and its
//! outcome comes back in [`EventHandler::transmission_sent`].
//!
//! Every rule of the threaded connections holds: the deadlines (greeting,
//! message, write, idle), the memory budget (a message waits for room
//! before its 0xFF, checked every [`BUDGET_RETRY`]), the plugins, who may
//! send when (a message of the peer's that began is taken before ours; a
//! crossing is a `Conflict`), the queue of messages from other connections
//! and the graceful stop.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tinyproto::{FlushPolicy, Io, Machine, Moved, Step, LENGTH_FIELD_LEN};

use crate::budget::{Lease, NoRoom};
use crate::config::SharedConfig;
use crate::conn::{chunk_buffer_len, release, Owner, FIRST_STEP, RECEIVE_CHUNK};
use crate::connections::{lock, Connections, Ended, LoopEvent, Shared, StopHandle};
use crate::error::{Deadline, Error};
use crate::handler::{panic_message, Take};
use crate::id::ConnId;
use crate::sleep::{Mailbox, Wake};

/// A message waiting for room in the memory budget looks again this often.
pub(crate) const BUDGET_RETRY: Duration = Duration::from_millis(5);

/// Bytes read ahead of the machine per connection: a small message's
/// length and payload in one system call.
const READ_AHEAD: usize = 4 * 1024;

/// Writes wait in a connection's buffer up to this much, so that the end of
/// one message and the length of the next leave together; larger payloads
/// go from the message itself.
const WRITE_BUFFER: usize = 16 * 1024;

/// At most this many of the peer's messages are taken before one of ours
/// goes out (as for a connection thread).
const MAX_TAKEN_BEFORE_SEND: usize = 64;

/// The token of an event thread's waker; connections' are their ids.
const WAKER: Token = Token(usize::MAX);

/// Runs one operation of `$served`'s machine until it is done (`Some`, with
/// its result) or its I/O would block (`None`); `?` on a socket's failure.
macro_rules! run {
    ($served:ident, $op:expr) => {
        loop {
            let moved = match $op {
                Step::Done(result) => break Some(result.map_err(protocol)),
                Step::Io(io) => $served.wire.perform(io)?,
            };
            let Some(moved) = moved else {
                break None;
            };
            if let Err(e) = $served.machine.moved(moved) {
                break Some(Err(protocol(e)));
            }
        }
    };
}

// ---- what a user writes ----

/// The hooks of a connection served on an event thread
/// ([`Server::set_event_handler`](crate::Server::set_event_handler)): those
/// of [`Handler`](crate::Handler), except that none may wait. Replies are
/// queued with [`EventConn::send`] and go out when the hook returned; each
/// one's outcome comes back in [`transmission_sent`](Self::transmission_sent).
///
/// An error a hook returns ends the connection with it unless it is
/// recoverable ([`Error::is_recoverable`]): then it is logged and the
/// connection goes on. A panicking hook ends its connection with
/// [`Error::Panicked`]. A hook that blocks (a lock held for long, a file
/// read, a sleep) holds up every connection of its event thread: hand such
/// work to a thread of your own and [`Connections::send_to`] the result.
pub trait EventHandler: Send + 'static {
    /// Runs once, after the greeting, before the first message.
    fn pre_loop(&mut self, conn: &mut EventConn) -> Result<(), Error> {
        let _ = conn;
        Ok(())
    }

    /// Runs after each message received, and every
    /// [`loop_pass_interval`](crate::Server::set_loop_pass_interval) if one
    /// is set and nothing else happened.
    fn loop_pass(&mut self, conn: &mut EventConn) -> Result<(), Error> {
        let _ = conn;
        Ok(())
    }

    /// Decides how to take the next message from its announced `len`,
    /// before any of its payload moves (see [`Take`]). By default: whole up
    /// to [`max_message_len`](EventConn::max_message_len), rejected beyond.
    fn message_announced(&mut self, conn: &EventConn, len: u32) -> Take {
        if len <= conn.max_message_len() {
            Take::Whole
        } else {
            Take::Reject
        }
    }

    /// Runs for each message taken [`Take::Whole`] (after the plugins).
    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        let _ = (conn, msg);
        Ok(())
    }

    /// Receives each chunk of a message taken [`Take::Chunks`], in order, as
    /// its bytes arrive (at most 64 KiB each). If the message breaks off,
    /// `post_loop` gets the error: discard what came.
    fn transmission_chunk(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let _ = chunk;
        Ok(())
    }

    /// Runs when the whole of a message taken [`Take::Chunks`] (`len` bytes)
    /// has arrived.
    fn transmission_complete(&mut self, conn: &mut EventConn, len: u32) -> Result<(), Error> {
        let _ = (conn, len);
        Ok(())
    }

    /// Runs once for each message this connection sent, whoever queued it
    /// ([`EventConn::send`], [`Connections::send_to`], a broadcast), with
    /// the message as queued (before the plugins) and its outcome: `Ok`
    /// once the peer accepted it and it was written; a rejection
    /// (`Error::Protocol(tinyproto::Error::Rejected { .. })`) or a plugin's
    /// refusal, after which the connection goes on. A failure that ends the
    /// connection goes to `post_loop` instead.
    fn transmission_sent(&mut self, conn: &mut EventConn, msg: &[u8], result: &Result<(), Error>) {
        let _ = (conn, msg, result);
    }

    /// Runs once when the connection ends, however it ends; `result` is
    /// `Ok(())` for a normal end (the peer closed between messages, or a
    /// stop).
    fn post_loop(&mut self, conn: &mut EventConn, result: &Result<(), Error>) {
        let _ = (conn, result);
    }
}

/// Does nothing: messages are received and dropped.
impl EventHandler for () {}

/// A handler made of one closure, called for each whole message on an
/// event thread: the event threads' [`on_message`](crate::on_message).
///
/// ```no_run
/// use tinyproto_std::{events, Server};
///
/// let mut server = Server::new();
/// server.add_addr("127.0.0.1:7000")?;
/// server.set_event_handler(|| events::on_message(|conn, msg| conn.send(msg))); // echo
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn on_message<F>(f: F) -> OnEventMessage<F>
where
    F: FnMut(&mut EventConn, &[u8]) -> Result<(), Error> + Send + 'static,
{
    OnEventMessage(f)
}

/// The handler [`on_message`] makes of a closure.
#[derive(Debug, Clone)]
pub struct OnEventMessage<F>(F);

impl<F> EventHandler for OnEventMessage<F>
where
    F: FnMut(&mut EventConn, &[u8]) -> Result<(), Error> + Send + 'static,
{
    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        (self.0)(conn, msg)
    }
}

/// A connection as its [`EventHandler`] sees it: who it is, and a queue of
/// messages to send that never waits.
#[derive(Debug)]
pub struct EventConn {
    id: ConnId,
    peer: SocketAddr,
    local: SocketAddr,
    cfg: SharedConfig,
    owner: Owner,
    /// Messages to send, in order, as queued (the plugins run as each goes).
    outbox: VecDeque<Outgoing>,
    stop: bool,
    mailbox: Arc<Mailbox>,
    last_activity: Instant,
}

impl EventConn {
    /// The connection's id in its server's registry.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// This side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The longest message taken by default.
    pub fn max_message_len(&self) -> u32 {
        self.cfg.max_message_len
    }

    /// When the last message moved, either way (or the connection began).
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// Queues `msg` to send to the peer, after what is queued already, and
    /// returns at once; it goes out when the hook returned and nothing of
    /// the peer's is arriving. Its outcome comes back in
    /// [`EventHandler::transmission_sent`]. [`Error::QueueFull`] when
    /// [`queue_len`](crate::Server::set_queue_len) messages wait already.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), Error> {
        if self.outbox.len() >= self.cfg.queue_len.max(1) {
            return Err(Error::QueueFull(self.id));
        }
        self.outbox.push_back(Outgoing::Own(msg.to_vec(), None));
        Ok(())
    }

    /// Messages queued and not sent yet.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// The registry of the server's active connections.
    pub fn active_connections(&self) -> Connections {
        self.owner.connections.clone()
    }

    /// A handle that stops the whole server.
    pub fn loop_stop_handle(&self) -> StopHandle {
        self.owner.stop.clone()
    }

    /// Ends this connection once what is queued went out (its `post_loop`
    /// runs with `Ok`).
    pub fn stop(&mut self) {
        self.stop = true;
    }

    /// True once [`stop`](Self::stop) was called or the server is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stop || self.mailbox.is_draining()
    }
}

/// A message waiting to go out: a copy the handler queued (which may hold
/// the room in the memory budget of the message it answers), or one that
/// other connections queued (shared between them).
#[derive(Debug)]
enum Outgoing {
    Own(Vec<u8>, Option<Lease>),
    Queued(Arc<[u8]>),
}

impl Outgoing {
    fn bytes(&self) -> &[u8] {
        match self {
            Outgoing::Own(msg, _) => msg,
            Outgoing::Queued(msg) => msg,
        }
    }

    /// Frees it (its room in the budget too), giving a large buffer's pages
    /// back to the system (see `release`).
    fn release(self) {
        if let Outgoing::Own(mut msg, _lease) = self {
            release(&mut msg);
        }
    }
}

// ---- the event threads ----

/// A connection handed to an event thread.
pub(crate) struct NewConn {
    pub(crate) id: ConnId,
    pub(crate) stream: Arc<TcpStream>,
    pub(crate) peer: SocketAddr,
    pub(crate) cfg: SharedConfig,
    pub(crate) owner: Owner,
    pub(crate) handler: Box<dyn EventHandler>,
    pub(crate) mailbox: Arc<Mailbox>,
}

/// What other threads leave for an event thread.
#[derive(Default)]
struct Pending {
    new: Vec<NewConn>,
    /// Connections whose mailbox changed (a queued message, a stop).
    woken: Vec<ConnId>,
    stopping: bool,
}

/// One event thread's door: its pending work and the waker of its
/// readiness set.
pub(crate) struct Lane {
    pending: Mutex<Pending>,
    waker: Waker,
}

impl Lane {
    fn post(&self, change: impl FnOnce(&mut Pending)) {
        change(&mut lock(&self.pending));
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake an event thread: {e}");
        }
    }

    /// What wakes connection `id` when its mailbox changes.
    pub(crate) fn wake_for(self: &Arc<Self>, id: ConnId) -> Wake {
        let lane = self.clone();
        Wake::new(move || lane.post(|p| p.woken.push(id)))
    }

    /// Hands a registered connection to the thread.
    pub(crate) fn hand_over(&self, conn: NewConn) {
        self.post(|p| p.new.push(conn));
    }
}

/// The event threads of a server, each with its readiness set.
pub(crate) struct EventThreads {
    lanes: Vec<Arc<Lane>>,
    threads: Vec<JoinHandle<()>>,
    next: usize,
}

impl std::fmt::Debug for EventThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventThreads")
            .field("threads", &self.lanes.len())
            .finish()
    }
}

impl EventThreads {
    /// Starts one thread per available core. Ends go to `events`.
    pub(crate) fn start(shared: Arc<Shared>, events: Sender<LoopEvent>) -> io::Result<Self> {
        let n = thread::available_parallelism().map_or(1, |n| n.get());
        let mut lanes = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let poll = Poll::new()?;
            let lane = Arc::new(Lane {
                pending: Mutex::new(Pending::default()),
                waker: Waker::new(poll.registry(), WAKER)?,
            });
            let thread = {
                let (lane, shared, events) = (lane.clone(), shared.clone(), events.clone());
                thread::Builder::new()
                    .name(format!("tinyproto-events-{i}"))
                    .spawn(move || run(poll, &lane, &shared, &events))?
            };
            lanes.push(lane);
            threads.push(thread);
        }
        Ok(Self {
            lanes,
            threads,
            next: 0,
        })
    }

    /// The lane of the next connection (each in turn).
    pub(crate) fn next_lane(&mut self) -> Arc<Lane> {
        self.next = (self.next + 1) % self.lanes.len();
        self.lanes[self.next].clone()
    }
}

impl Drop for EventThreads {
    /// Stops the threads; connections still there end (their `post_loop`
    /// runs). Not joined: a hook that never returns must not hang its server.
    fn drop(&mut self) {
        for lane in &self.lanes {
            lane.post(|p| p.stopping = true);
        }
        self.threads.clear();
    }
}

/// An event thread: waits for readiness, a lane's news or the next timer,
/// and drives each connection concerned until its I/O would block.
fn run(mut poll: Poll, lane: &Lane, shared: &Shared, events: &Sender<LoopEvent>) {
    let mut conns: HashMap<ConnId, Served> = HashMap::new();
    // Each connection's earliest timer; entries whose time moved are stale.
    let mut timers: BinaryHeap<Reverse<(Instant, ConnId)>> = BinaryHeap::new();
    let mut ready = Events::with_capacity(1024);
    let mut due: Vec<ConnId> = Vec::new();
    loop {
        let timeout = timers
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut ready, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("event thread: waiting for readiness failed: {e}");
            for (_, served) in conns.drain() {
                served.end(
                    Err(Error::Io(io::Error::new(e.kind(), e.to_string()))),
                    &poll,
                    shared,
                    events,
                );
            }
            return;
        }
        for event in ready.iter().filter(|e| e.token() != WAKER) {
            let id = ConnId(event.token().0 as u64);
            if let Some(served) = conns.get_mut(&id) {
                // Bytes may have come since the socket was last found empty.
                served.wire.drained = false;
                due.push(id);
            }
        }
        let Pending {
            new,
            woken,
            stopping,
        } = std::mem::take(&mut *lock(&lane.pending));
        due.extend(woken);
        for conn in new {
            let id = conn.id;
            let served = Served::new(conn);
            match served.register(&poll) {
                Ok(()) => {
                    conns.insert(id, served);
                    due.push(id);
                }
                Err(e) => served.end(Err(e.into()), &poll, shared, events),
            }
        }
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = timers.peek() {
            if at > now {
                break;
            }
            timers.pop();
            if let Some(served) = conns.get_mut(&id) {
                if served.scheduled == Some(at) {
                    served.scheduled = None;
                    due.push(id);
                }
            }
        }
        for id in due.drain(..) {
            let Some(served) = conns.get_mut(&id) else {
                continue; // ended already
            };
            match served.drive() {
                None => served.schedule(&mut timers),
                Some(result) => {
                    let served = conns.remove(&id).expect("looked up above");
                    served.end(result, &poll, shared, events);
                }
            }
        }
        if stopping {
            for (_, served) in conns.drain() {
                let stopped = io::Error::new(io::ErrorKind::ConnectionAborted, "server stopped");
                served.end(Err(Error::Io(stopped)), &poll, shared, events);
            }
            return;
        }
    }
}

// ---- one connection ----

/// What a connection is doing.
#[derive(Debug)]
enum Task {
    /// Exchanging the greeting.
    Greet,
    /// Between messages: the peer's next length, or ours to send.
    Idle,
    /// A length arrived: the handler decides, and room is leased.
    Decide(u32),
    /// Answering 0xFF to a length of `len` (`chunked`: to the handler in
    /// chunks).
    Accept { len: u32, chunked: bool },
    /// The payload of a message of `len` bytes arriving.
    Payload { len: u32, chunked: bool },
    /// Answering 0x00, with the reason for the loop, if any.
    Reject(Option<Error>),
    /// The first message of the outbox going out.
    Send,
}

/// A connection on an event thread.
struct Served {
    conn: EventConn,
    handler: Box<dyn EventHandler>,
    machine: Machine,
    wire: Wire,
    task: Task,
    /// The whole message arriving, or the chunk buffer.
    msg: Vec<u8>,
    /// The room `msg` holds in the memory budget.
    lease: Option<Lease>,
    /// The first message of the outbox is going out.
    in_flight: bool,
    /// It, through the plugins, if they changed it.
    transformed: Option<Vec<u8>>,
    /// The deadline that ends the connection.
    deadline: Option<(Instant, Deadline)>,
    /// When to look again for room in the budget.
    retry_at: Option<Instant>,
    /// When `loop_pass` runs next, if an interval is set.
    next_pass: Option<Instant>,
    /// The timer this connection has in its thread's heap.
    scheduled: Option<Instant>,
    /// The peer's messages taken while one of ours waited.
    taken_while_due: usize,
}

impl Served {
    fn new(new: NewConn) -> Self {
        let NewConn {
            id,
            stream,
            peer,
            cfg,
            owner,
            handler,
            mailbox,
        } = new;
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let now = Instant::now();
        let mut machine = Machine::new();
        machine.set_flush_policy(FlushPolicy::BeforeRead);
        machine.set_max_message_len(cfg.max_message_len);
        Self {
            deadline: Some((now + cfg.timeouts.greeting, Deadline::Greeting)),
            next_pass: cfg.loop_pass_interval.map(|i| now + i),
            conn: EventConn {
                id,
                peer,
                local,
                cfg,
                owner,
                outbox: VecDeque::new(),
                stop: false,
                mailbox,
                last_activity: now,
            },
            handler,
            machine,
            wire: Wire::new(stream),
            task: Task::Greet,
            msg: Vec::new(),
            lease: None,
            in_flight: false,
            transformed: None,
            retry_at: None,
            scheduled: None,
            taken_while_due: 0,
        }
    }

    /// Makes the socket non-blocking and registers it with `poll`.
    fn register(&self, poll: &Poll) -> io::Result<()> {
        let socket = &self.wire.socket;
        socket.set_nonblocking(true)?;
        socket.set_nodelay(self.conn.cfg.nodelay)?;
        poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(self.conn.id.as_u64() as usize),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Moves the connection on until its I/O would block: `None`, or the
    /// connection's end.
    fn drive(&mut self) -> Option<Result<(), Error>> {
        match self.advance() {
            Ok(Some(())) => Some(Ok(())),
            Ok(None) => None,
            Err(e) if e.is_closed() => Some(Ok(())),
            Err(e) => Some(Err(e)),
        }
    }

    /// [`drive`](Self::drive): `Ok(None)` to wait, `Ok(Some(()))` at a
    /// normal end.
    fn advance(&mut self) -> Result<Option<()>, Error> {
        let now = Instant::now();
        if let Some((at, which)) = self.deadline {
            // A message waiting for room is refused at its deadline, not ended.
            if now >= at && !matches!(self.task, Task::Decide(_)) {
                return Err(Error::Timeout(which));
            }
        }
        loop {
            match &mut self.task {
                Task::Greet => {
                    let Some(greeted) = run!(self, self.machine.greet()) else {
                        return self.wait();
                    };
                    greeted?;
                    self.deadline = None;
                    self.task = Task::Idle;
                    self.hook(|h, conn| h.pre_loop(conn))?;
                }
                Task::Idle => {
                    if let Some(end) = self.between_messages(now)? {
                        return Ok(end);
                    }
                }
                Task::Decide(len) => {
                    let len = *len;
                    if !self.decide(len, now) {
                        return Ok(None);
                    }
                }
                Task::Accept { len, chunked } => {
                    let (len, chunked) = (*len, *chunked);
                    let Some(accepted) = run!(self, self.machine.begin_receive(len)) else {
                        return self.wait();
                    };
                    accepted?;
                    self.task = Task::Payload { len, chunked };
                }
                Task::Payload { len, chunked } => {
                    let (len, chunked) = (*len, *chunked);
                    if !self.take_payload(len, chunked)? {
                        return self.wait();
                    }
                }
                Task::Reject(_) => {
                    let Some(rejected) = run!(self, self.machine.reject()) else {
                        return self.wait();
                    };
                    let len = rejected?;
                    self.message_done();
                    let Task::Reject(reason) = std::mem::replace(&mut self.task, Task::Idle) else {
                        unreachable!("matched above");
                    };
                    match reason {
                        None => log::info!("{}: rejected a message of {len} bytes", self.conn.id),
                        Some(reason) => self.hook(|_, _| Err(reason))?,
                    }
                }
                Task::Send => {
                    if !self.send_first()? {
                        return self.wait();
                    }
                }
            }
        }
    }

    /// Between messages: moves what other connections queued into the
    /// outbox, ends the connection if it is stopping and nothing is left,
    /// sends ours if nothing of the peer's is arriving, or reads the peer's
    /// length. `Some` to return from `advance`.
    fn between_messages(&mut self, now: Instant) -> Result<Option<Option<()>>, Error> {
        let queued = std::mem::take(&mut self.conn.mailbox.lock().queued);
        self.conn
            .outbox
            .extend(queued.into_iter().map(Outgoing::Queued));
        if self.next_pass.is_some_and(|at| now >= at) {
            self.next_pass = self.conn.cfg.loop_pass_interval.map(|i| now + i);
            self.hook(|h, conn| h.loop_pass(conn))?;
        }
        let begun = self.machine.is_in_progress() || self.wire.peer_has_begun()?;
        // Bounded: a peer that keeps sending cannot hold ours back for ever
        // (what crosses it then is a conflict).
        let overdue =
            self.taken_while_due >= MAX_TAKEN_BEFORE_SEND && !self.machine.is_in_progress();
        if !self.conn.outbox.is_empty() && (!begun || overdue) {
            self.task = Task::Send;
            return Ok(None);
        }
        if !begun && self.conn.is_stopping() {
            return Ok(Some(Some(())));
        }
        let Some(len) = run!(self, self.machine.next_length()) else {
            if self.machine.is_in_progress() {
                self.arm(Deadline::Message, self.conn.cfg.timeouts.message);
            } else {
                self.deadline = self
                    .conn
                    .cfg
                    .timeouts
                    .idle
                    .map(|idle| (self.conn.last_activity + idle, Deadline::Idle));
            }
            return self.wait().map(Some);
        };
        let len = len?;
        self.arm(Deadline::Message, self.conn.cfg.timeouts.message);
        if !self.conn.outbox.is_empty() {
            self.taken_while_due += 1;
        }
        self.task = Task::Decide(len);
        Ok(None)
    }

    /// The handler's decision on a length, and its room in the budget;
    /// false while it waits for room.
    fn decide(&mut self, len: u32, now: Instant) -> bool {
        let take = catch_unwind(AssertUnwindSafe(|| {
            self.handler.message_announced(&self.conn, len)
        }))
        .unwrap_or_else(|p| Take::Refuse(Error::Panicked(panic_message(&*p))));
        let (chunked, bytes) = match take {
            Take::Whole if len <= self.conn.cfg.max_message_len => (false, u64::from(len)),
            Take::Whole => {
                self.task = Task::Reject(None);
                return true;
            }
            Take::Chunks if !self.conn.cfg.plugins.is_empty() => {
                self.task = Task::Reject(Some(Error::Plugin(
                    "plugins need whole messages: no chunks with plugins".into(),
                )));
                return true;
            }
            Take::Chunks => (true, chunk_buffer_len(len)),
            Take::Reject => {
                self.task = Task::Reject(None);
                return true;
            }
            Take::Refuse(reason) => {
                self.task = Task::Reject(Some(reason));
                return true;
            }
        };
        let budget = self.conn.cfg.budget.clone();
        match budget.try_lease(bytes) {
            Ok(Some(lease)) => {
                self.lease = Some(lease);
                self.retry_at = None;
                self.task = Task::Accept { len, chunked };
                true
            }
            Ok(None)
                if self.deadline.is_some_and(|(at, _)| now < at) && !self.conn.is_stopping() =>
            {
                self.retry_at = Some(now + BUDGET_RETRY);
                false
            }
            Ok(None) | Err(NoRoom::OverBudget | NoRoom::NoRoomInTime) => {
                let why = if bytes > budget.limit() {
                    "larger than the whole budget"
                } else {
                    "no room in time"
                };
                log::info!("{}: refused a message of {len} bytes: {why}", self.conn.id);
                self.retry_at = None;
                self.task = Task::Reject(Some(Error::MemoryBudget {
                    len,
                    budget: budget.limit(),
                }));
                true
            }
        }
    }

    /// Reads the payload as it arrives: into `msg`, grown no faster than
    /// bytes come, or chunk by chunk to the handler. False to wait; true
    /// once the message was handed on.
    fn take_payload(&mut self, len: u32, chunked: bool) -> Result<bool, Error> {
        if chunked && self.msg.is_empty() {
            self.msg.resize(RECEIVE_CHUNK, 0);
        }
        loop {
            let remaining = self.machine.remaining() as usize;
            if remaining == 0 {
                break;
            }
            if chunked {
                let Some(n) = read_chunk(&mut self.machine, &mut self.wire, &mut self.msg)? else {
                    return Ok(false);
                };
                let chunk = &self.msg[..n];
                let handler = &mut self.handler;
                let result = catch_unwind(AssertUnwindSafe(|| handler.transmission_chunk(chunk)))
                    .unwrap_or_else(|p| Err(Error::Panicked(panic_message(&*p))));
                if let Err(e) = result {
                    // Half read: out of step.
                    self.machine.break_off();
                    return Err(e);
                }
            } else {
                let old = self.msg.len();
                let step = old.clamp(FIRST_STEP, RECEIVE_CHUNK).min(remaining);
                self.msg.resize(old + step, 0);
                match read_chunk(&mut self.machine, &mut self.wire, &mut self.msg[old..]) {
                    Ok(Some(n)) => self.msg.truncate(old + n),
                    Ok(None) => {
                        self.msg.truncate(old);
                        return Ok(false);
                    }
                    Err(e) => {
                        self.msg.truncate(old);
                        return Err(e);
                    }
                }
            }
        }
        self.message_done();
        self.task = Task::Idle;
        let result = if chunked {
            self.msg = Vec::new();
            self.hook(|h, conn| h.transmission_complete(conn, len))
        } else {
            let mut msg = std::mem::take(&mut self.msg);
            let queued = self.conn.outbox.len();
            let result = match self.conn.cfg.plugins.receive(msg) {
                Ok(plain) => {
                    msg = plain;
                    let result = self.hook(|h, conn| h.transmission_received(conn, &msg));
                    // A reply queued by the hook keeps the message's room in
                    // the budget until it is sent: an echo holds its copy
                    // within the budget, as the message did.
                    if let Some(Outgoing::Own(_, lease @ None)) = self.conn.outbox.get_mut(queued) {
                        *lease = self.lease.take();
                    }
                    result
                }
                Err(e) => {
                    msg = Vec::new();
                    self.hook(|_, _| Err(Error::Plugin(e)))
                }
            };
            release(&mut msg);
            self.msg = msg;
            result
        };
        self.lease = None;
        result?;
        self.hook(|h, conn| h.loop_pass(conn))?;
        Ok(true)
    }
}

impl Served {
    /// Sends the first message of the outbox (through the plugins); false
    /// to wait.
    fn send_first(&mut self) -> Result<bool, Error> {
        self.task = Task::Idle;
        let Some(first) = self.conn.outbox.front() else {
            return Ok(true);
        };
        if !self.in_flight {
            match self.conn.cfg.plugins.transmit(first.bytes()) {
                Ok(Cow::Borrowed(_)) => self.transformed = None,
                Ok(Cow::Owned(wire)) => self.transformed = Some(wire),
                Err(e) => {
                    let first = self.conn.outbox.pop_front().expect("looked at above");
                    self.sent(first, Err(Error::Plugin(e)))?;
                    return Ok(true);
                }
            }
            self.in_flight = true;
            self.arm(Deadline::Message, self.conn.cfg.timeouts.message);
        }
        let msg: &[u8] = match &self.transformed {
            Some(wire) => wire,
            None => self.conn.outbox.front().expect("in flight").bytes(),
        };
        let Some(result) = run!(self, self.machine.transmit(msg)) else {
            self.task = Task::Send;
            return Ok(false);
        };
        let result = match result {
            // A 0x00 with the rest of one length right behind it is the
            // peer's own length: both sides sent at once.
            Err(Error::Protocol(tinyproto::Error::Rejected { .. }))
                if self.wire.peer_length_behind()? =>
            {
                Err(Error::Protocol(tinyproto::Error::Conflict))
            }
            other => other,
        };
        self.in_flight = false;
        if let Some(mut wire) = self.transformed.take() {
            release(&mut wire);
        }
        let first = self.conn.outbox.pop_front().expect("in flight");
        self.taken_while_due = 0;
        self.message_done();
        match result {
            Err(e) if !e.is_recoverable() || self.machine.is_broken() => {
                first.release();
                Err(e)
            }
            Err(e) => {
                let len = first.bytes().len();
                log::info!(
                    "{}: a message of {len} bytes was not taken: {e}",
                    self.conn.id
                );
                self.sent(first, Err(e))?;
                Ok(true)
            }
            Ok(()) => {
                self.sent(first, Ok(()))?;
                Ok(true)
            }
        }
    }

    /// Tells the handler how a message went, then frees it.
    fn sent(&mut self, msg: Outgoing, result: Result<(), Error>) -> Result<(), Error> {
        let told = self.hook(|h, conn| {
            h.transmission_sent(conn, msg.bytes(), &result);
            Ok(())
        });
        msg.release();
        told
    }

    /// Runs a hook: a panic is an error; a recoverable error is logged and
    /// the connection goes on.
    fn hook(
        &mut self,
        f: impl FnOnce(&mut dyn EventHandler, &mut EventConn) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let Self { handler, conn, .. } = self;
        let result = catch_unwind(AssertUnwindSafe(|| f(&mut **handler, conn)))
            .unwrap_or_else(|p| Err(Error::Panicked(panic_message(&*p))));
        match result {
            Err(e) if e.is_recoverable() && !self.machine.is_broken() => {
                log::info!("{}: {e} (the connection goes on)", self.conn.id);
                Ok(())
            }
            other => other,
        }
    }

    /// About to wait for readiness: everything written goes out that can; a
    /// write that cannot has the write deadline, if nothing else applies.
    fn wait<T>(&mut self) -> Result<Option<T>, Error> {
        if !self.wire.flush()? && self.deadline.is_none() {
            self.arm(Deadline::Write, self.conn.cfg.timeouts.write);
        }
        Ok(None)
    }

    /// Sets deadline `which`, `after` from now, unless it is set already.
    fn arm(&mut self, which: Deadline, after: Duration) {
        if !matches!(self.deadline, Some((_, set)) if set == which) {
            self.deadline = Some((Instant::now() + after, which));
        }
    }

    /// A message moved, either way.
    fn message_done(&mut self) {
        self.deadline = None;
        self.conn.last_activity = Instant::now();
    }

    /// Puts the connection's next timer in its thread's heap, unless an
    /// earlier one of its is there.
    fn schedule(&mut self, timers: &mut BinaryHeap<Reverse<(Instant, ConnId)>>) {
        let next = [
            self.deadline.map(|(at, _)| at),
            self.retry_at,
            self.next_pass,
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(at) = next {
            if self.scheduled.is_none_or(|s| at < s) {
                timers.push(Reverse((at, self.conn.id)));
                self.scheduled = Some(at);
            }
        }
    }

    /// Ends the connection: `post_loop`, the socket closed, its slot freed
    /// and its end reported to the server's loop.
    fn end(
        mut self,
        result: Result<(), Error>,
        poll: &Poll,
        shared: &Shared,
        events: &Sender<LoopEvent>,
    ) {
        let (id, peer) = (self.conn.id, self.conn.peer);
        match &result {
            Ok(()) => log::debug!("{id} ({peer}) ended"),
            Err(e) => log::info!("{id} ({peer}) ended: {e}"),
        }
        let Self { handler, conn, .. } = &mut self;
        if catch_unwind(AssertUnwindSafe(|| handler.post_loop(conn, &result))).is_err() {
            log::error!("{id}: post_loop panicked");
        }
        let _ = self.wire.flush();
        let socket = &self.wire.socket;
        if let Err(e) = poll
            .registry()
            .deregister(&mut SourceFd(&socket.as_raw_fd()))
        {
            log::debug!("{id}: deregistering: {e}");
        }
        let _ = socket.shutdown(Shutdown::Both);
        shared.conns().remove(&id);
        let _ = events.send(LoopEvent::Ended(Ended { id, peer, result }));
    }
}

/// A machine's error as this crate's.
fn protocol(e: tinyproto::Error) -> Error {
    Error::Protocol(e.widen())
}

/// Reads one chunk of the payload in flight into `buf`: `Some` with its
/// size, `None` if no byte is there yet.
fn read_chunk(
    machine: &mut Machine,
    wire: &mut Wire,
    buf: &mut [u8],
) -> Result<Option<usize>, Error> {
    loop {
        let moved = match machine.read_chunk(buf) {
            Step::Done(result) => return result.map(Some).map_err(protocol),
            Step::Io(io) => wire.perform(io)?,
        };
        let Some(moved) = moved else {
            return Ok(None);
        };
        machine.moved(moved).map_err(protocol)?;
        // The one read a chunk asks for is the chunk itself (a flush may come first).
        if let Moved::Read(n) = moved {
            return Ok(Some(n));
        }
    }
}

/// A connection's non-blocking socket with its read-ahead and write
/// buffer: the one place its bytes move.
struct Wire {
    socket: Arc<TcpStream>,
    ahead: Box<[u8]>,
    /// The unread bytes of `ahead`.
    start: usize,
    end: usize,
    /// The peer closed its side.
    eof: bool,
    /// A read found the socket empty since its last readiness event: until
    /// the next one (which any later byte brings; readiness is
    /// edge-triggered), another read would find nothing, and is not made.
    drained: bool,
    out: Vec<u8>,
}

impl Wire {
    fn new(socket: Arc<TcpStream>) -> Self {
        Self {
            socket,
            ahead: vec![0; READ_AHEAD].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            drained: false,
            out: Vec::new(),
        }
    }

    /// Does the machine's I/O: what moved, or `None` if it would block.
    fn perform(&mut self, io: Io<'_>) -> io::Result<Option<Moved>> {
        Ok(match io {
            Io::Write(bytes) => self.write(bytes)?.map(Moved::Wrote),
            Io::Read(buf) => self.read(buf)?.map(Moved::Read),
            Io::Flush => self.flush()?.then_some(Moved::Flushed),
        })
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if self.start == self.end {
            if self.eof {
                return Ok(Some(0));
            }
            if buf.len() >= READ_AHEAD {
                // A large payload goes straight into its buffer.
                return self.read_socket(buf);
            }
            if !self.fill()? {
                return Ok(None);
            }
            if self.start == self.end {
                return Ok(Some(0));
            }
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.ahead[self.start..self.start + n]);
        self.start += n;
        Ok(Some(n))
    }

    /// Reads what the socket has into the read-ahead; false if nothing was
    /// there (the end of the stream counts as something).
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.ahead.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.ahead.len() {
            return Ok(true);
        }
        let (end, socket) = (self.end, &self.socket);
        let read = Self::read_from(socket, &mut self.drained, &mut self.ahead[end..])?;
        match read {
            None => Ok(false),
            Some(0) => {
                self.eof = true;
                Ok(true)
            }
            Some(n) => {
                self.end += n;
                Ok(true)
            }
        }
    }

    fn read_socket(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        Self::read_from(&self.socket, &mut self.drained, buf)
    }

    /// One non-blocking read into `buf`, unless the socket was found empty
    /// since its last readiness; a short read finds it empty too.
    fn read_from(
        socket: &TcpStream,
        drained: &mut bool,
        buf: &mut [u8],
    ) -> io::Result<Option<usize>> {
        if *drained {
            return Ok(None);
        }
        let read = retry(|| (&*socket).read(&mut *buf))?;
        *drained = read.is_none_or(|n| n > 0 && n < buf.len());
        Ok(read)
    }

    /// True when the peer has begun a message (or closed): bytes are here
    /// or in the socket. Looked for right before ours would go out, with a
    /// read of the socket even if it was found empty before: a readiness
    /// event still on its way must not let ours cross the peer's.
    fn peer_has_begun(&mut self) -> io::Result<bool> {
        if self.start == self.end && !self.eof {
            self.drained = false;
            self.fill()?;
        }
        Ok(self.start < self.end || self.eof)
    }

    /// The core's [`zero_answer_is_a_length`](tinyproto::zero_answer_is_a_length)
    /// over what follows a 0x00 answer, looked for if too little is here.
    fn peer_length_behind(&mut self) -> io::Result<bool> {
        if self.end - self.start < LENGTH_FIELD_LEN - 1 && !self.eof {
            self.fill()?;
        }
        Ok(tinyproto::zero_answer_is_a_length(self.end - self.start))
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        if self.out.len() + bytes.len() > WRITE_BUFFER && !self.flush()? {
            return Ok(None);
        }
        if self.out.len() + bytes.len() <= WRITE_BUFFER {
            self.out.extend_from_slice(bytes);
            return Ok(Some(bytes.len()));
        }
        match retry(|| (&*self.socket).write(bytes))? {
            Some(0) => Err(io::ErrorKind::WriteZero.into()),
            moved => Ok(moved),
        }
    }

    /// Writes the buffer out; false if the socket takes no more now.
    fn flush(&mut self) -> io::Result<bool> {
        while !self.out.is_empty() {
            match retry(|| (&*self.socket).write(&self.out))? {
                None => return Ok(false),
                Some(0) => return Err(io::ErrorKind::WriteZero.into()),
                Some(n) => {
                    self.out.drain(..n);
                }
            }
        }
        Ok(true)
    }
}

/// A non-blocking call's bytes, `None` if it would block; retried when a
/// signal interrupted it.
fn retry(mut call: impl FnMut() -> io::Result<usize>) -> io::Result<Option<usize>> {
    loop {
        match call() {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
