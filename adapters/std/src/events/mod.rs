//! Connections served on a few event threads, for handlers that never
//! block: the [`EventHandler`] hooks, the [`EventConn`] they see, and the
//! threads that drive the core's sans-IO [`Machine`](tinyproto::Machine) over non-blocking
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
//! before its 0xFF, looking again every 5 ms), the plugins, who may
//! send when (a message of the peer's that began is taken before ours; a
//! crossing is a `Conflict`), the queue of messages from other connections
//! and the graceful stop.

mod handler;
mod served;
mod wire;

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use mio::{Events, Poll, Token, Waker};

use crate::connections::{lock, Ended, LoopEvent, Shared};
use crate::error::Error;
use crate::handler::panic_message;
use crate::id::ConnId;
use crate::sleep::Wake;

pub use handler::{on_message, EventConn, EventHandler, OnEventMessage};
pub(crate) use served::NewConn;
use served::Served;

/// The token of an event thread's waker; connections' are their ids.
const WAKER: Token = Token(usize::MAX);

/// What other threads leave for an event thread.
#[derive(Default)]
struct Pending {
    new: Vec<NewConn>,
    /// Connections whose mailbox changed (a queued message, a stop).
    woken: Vec<ConnId>,
    stopping: bool,
    /// The thread has ended: nothing handed over would be served.
    closed: bool,
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

    /// Hands a registered connection to the thread; false (the connection
    /// dropped, never started) if the thread has ended.
    pub(crate) fn hand_over(&self, conn: NewConn) -> bool {
        let mut pending = lock(&self.pending);
        if pending.closed {
            return false;
        }
        pending.new.push(conn);
        drop(pending);
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake an event thread: {e}");
        }
        true
    }
}

/// The event threads of a server or client, each with its readiness set.
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

thread_local! {
    /// True on an event thread.
    static ON_EVENT_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// True when the calling thread is an event thread: a call that waits for
/// a connection's progress would wait for its own thread.
pub(crate) fn on_event_thread() -> bool {
    ON_EVENT_THREAD.with(Cell::get)
}

/// Closes an event thread's lane when the thread ends, a panic included:
/// the connections handed over and not taken end (a waiting `connect_to`
/// is told, as its sender goes).
struct Closing<'a> {
    lane: &'a Lane,
    shared: &'a Shared,
    events: &'a Sender<LoopEvent>,
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let new = {
            let mut pending = lock(&self.lane.pending);
            pending.closed = true;
            std::mem::take(&mut pending.new)
        };
        for conn in new {
            let (id, peer) = (conn.id, conn.peer);
            self.shared.conns().remove(&id);
            let stopped =
                io::Error::new(io::ErrorKind::ConnectionAborted, "its event thread ended");
            let _ = self.events.send(LoopEvent::Ended(Ended {
                id,
                peer,
                result: Err(Error::Io(stopped)),
            }));
        }
    }
}

/// An event thread: waits for readiness, a lane's news or the next timer,
/// and drives each connection concerned until its I/O would block.
fn run(mut poll: Poll, lane: &Lane, shared: &Shared, events: &Sender<LoopEvent>) {
    ON_EVENT_THREAD.with(|on| on.set(true));
    // However the thread ends: no more hand-overs, and those not taken yet end.
    let _closing = Closing {
        lane,
        shared,
        events,
    };
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
                served.wire.readable(event.is_read_closed());
                due.push(id);
            }
        }
        let Pending {
            new,
            woken,
            stopping,
            closed: _, // set only once this loop is over
        } = std::mem::take(&mut *lock(&lane.pending));
        due.extend(woken);
        for conn in new {
            let id = conn.id;
            let mut served = Served::new(conn);
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
            // A panic outside the hooks (a plugin's, say) ends only this
            // connection, as on a thread of its own.
            let driven = catch_unwind(AssertUnwindSafe(|| served.drive()))
                .unwrap_or_else(|p| Some(Err(Error::Panicked(panic_message(&*p)))));
            match driven {
                None => served.schedule(&mut timers),
                Some(result) => {
                    let served = conns.remove(&id).expect("looked up above");
                    served.end(result, &poll, shared, events);
                }
            }
        }
        if stopping {
            for (_, served) in conns.drain() {
                let stopped = io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "its server or client stopped",
                );
                served.end(Err(Error::Io(stopped)), &poll, shared, events);
            }
            return;
        }
    }
}
