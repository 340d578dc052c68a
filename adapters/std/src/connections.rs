//! The active connections of a server or client: the registry through which
//! connections reach each other ([`Connections`]: a message for another
//! connection goes to its mailbox, see `sleep`), the hooks' [`Context`] and
//! the [`StopHandle`].

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::duplex::{Direction, Half};
use crate::error::Error;
use crate::id::ConnId;
use crate::sleep::Mailbox;

/// Locks a mutex; a panic while it was held leaves our data consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a server's or client's own loop is woken by.
#[derive(Debug)]
pub(crate) enum LoopEvent {
    /// A listener has connections to accept (its index).
    Acceptable(usize),
    /// A connection thread ended.
    Ended(Ended),
    /// [`StopHandle::stop`] was called.
    Stop,
}

/// A connection thread's end.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) id: ConnId,
    pub(crate) peer: SocketAddr,
    pub(crate) result: Result<(), Error>,
}

/// A cloneable handle that asks a server's or client's loop to stop.
#[derive(Debug, Clone)]
pub struct StopHandle {
    stopped: Arc<AtomicBool>,
    wake: Sender<LoopEvent>,
}

impl StopHandle {
    pub(crate) fn new(wake: Sender<LoopEvent>) -> Self {
        Self {
            stopped: Arc::new(AtomicBool::new(false)),
            wake,
        }
    }

    /// Asks the loop to stop; `start` then stops gracefully and returns.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = self.wake.send(LoopEvent::Stop);
    }

    /// True once [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) mailbox: Arc<Mailbox>,
    /// The connection's socket, shared with its thread (no second file
    /// descriptor): the reactor reads its readiness, a forced stop shuts it.
    pub(crate) stream: Arc<TcpStream>,
    pub(crate) peer: SocketAddr,
    /// Which half of a duplex link it is (on a duplex server).
    pub(crate) half: Half,
}

impl Entry {
    /// A new connection's entry: on a duplex server, no half until its
    /// hello came.
    pub(crate) fn new(
        mailbox: Arc<Mailbox>,
        stream: Arc<TcpStream>,
        peer: SocketAddr,
        duplex: bool,
    ) -> Self {
        let half = if duplex { Half::Pending } else { Half::Plain };
        Self {
            mailbox,
            stream,
            peer,
            half,
        }
    }
}

/// State shared by a server or client, its reactor and its connection threads.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    conns: Mutex<HashMap<ConnId, Entry>>,
    /// Its connections are to finish and end (shared with their mailboxes).
    draining: Arc<AtomicBool>,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn conns(&self) -> MutexGuard<'_, HashMap<ConnId, Entry>> {
        lock(&self.conns)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The draining flag, for a new connection's mailbox.
    pub(crate) fn draining_flag(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    /// Tells every connection to finish and end.
    pub(crate) fn start_draining(&self) {
        // Set before the mailboxes are woken: no sleeper misses it.
        self.draining.store(true, Ordering::SeqCst);
        for entry in self.conns().values() {
            entry.mailbox.post(|_| {});
        }
    }

    /// Records which half of which duplex link connection `id` is.
    pub(crate) fn set_half(&self, id: ConnId, direction: Direction, pair: u128) {
        if let Some(entry) = self.conns().get_mut(&id) {
            entry.half = Half::Paired(direction, pair);
        }
    }

    pub(crate) fn new_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// A fresh registry whose ids go on from this one's: an id is never
    /// given twice by one server or client.
    pub(crate) fn successor(&self) -> Self {
        Self {
            next_id: AtomicU64::new(self.next_id.load(Ordering::Relaxed)),
            ..Self::default()
        }
    }
}

/// The registry of active connections of a server or client (the
/// reference's `active_connections`), by id. Cloneable; usable from any
/// thread, hooks included.
///
/// Messages sent through it are queued (up to
/// [`set_queue_len`](crate::Server::set_queue_len) per connection) and wake
/// the receiving connection's thread, which transmits them between its
/// messages, in order.
#[derive(Debug, Clone)]
pub struct Connections {
    shared: Arc<Shared>,
}

impl Connections {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The ids of the active connections, in no particular order.
    pub fn ids(&self) -> Vec<ConnId> {
        self.shared.conns().keys().copied().collect()
    }

    /// How many connections are active (each one holds a slot of the
    /// connection limit until its thread ends).
    pub fn len(&self) -> usize {
        self.shared.conns().len()
    }

    /// True when no connection is active.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when connection `id` is active.
    pub fn contains(&self, id: ConnId) -> bool {
        self.shared.conns().contains_key(&id)
    }

    /// The peer address of connection `id`.
    pub fn peer_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.shared.conns().get(&id).map(|e| e.peer)
    }

    /// Records which half of which duplex link connection `id` is.
    pub(crate) fn set_half(&self, id: ConnId, direction: Direction, pair: u128) {
        self.shared.set_half(id, direction, pair);
    }

    /// Queues `msg` for connection `id`. On a duplex server, a message for
    /// the up half of a link goes to its down half, and a connection whose
    /// hello has not come yet is not there to send to.
    ///
    /// **Who may send when.** The receiving connection's thread transmits a
    /// queued message between its messages, and only when nothing of its
    /// peer's is arriving (checked right before the length goes out; a
    /// message that has begun is taken first and goes to its handler). A
    /// peer that starts a message at that very moment crosses it: both
    /// connections end at once with a [`Conflict`](tinyproto::Error::Conflict).
    /// Clients that send whenever they like take no such chance on a
    /// duplex server ([`Server::set_duplex`](crate::Server::set_duplex)),
    /// where messages go only to the halves on which the client never sends.
    pub fn send_to(&self, id: ConnId, msg: &[u8]) -> Result<(), Error> {
        let conns = self.shared.conns();
        let entry = conns.get(&id).ok_or(Error::UnknownConnection(id))?;
        let target = match entry.half {
            Half::Plain | Half::Paired(Direction::Down, _) => entry,
            Half::Pending => return Err(Error::UnknownConnection(id)),
            Half::Paired(Direction::Up, pair) => conns
                .values()
                .find(|e| e.half == Half::Paired(Direction::Down, pair))
                .ok_or(Error::UnknownConnection(id))?,
        };
        if target.mailbox.queue(Arc::from(msg)) {
            Ok(())
        } else {
            Err(Error::QueueFull(id))
        }
    }

    /// Queues `msg` for every active connection but `except`; returns how
    /// many took it (a connection with a full queue is skipped). On a duplex
    /// server it goes to every down half but that of `except`'s link.
    ///
    /// Who may send when: as for [`send_to`](Self::send_to).
    pub fn broadcast(&self, msg: &[u8], except: Option<ConnId>) -> usize {
        let msg: Arc<[u8]> = Arc::from(msg);
        let conns = self.shared.conns();
        let except_link = except
            .and_then(|id| conns.get(&id))
            .and_then(|e| match e.half {
                Half::Paired(_, pair) => Some(pair),
                Half::Plain | Half::Pending => None,
            });
        conns
            .iter()
            .filter(|(id, e)| match e.half {
                Half::Plain => Some(**id) != except,
                Half::Paired(Direction::Down, pair) => Some(pair) != except_link,
                Half::Paired(Direction::Up, _) | Half::Pending => false,
            })
            .filter(|(_, e)| e.mailbox.queue(msg.clone()))
            .count()
    }
}

/// What a server's or client's hooks can reach.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) connections: Connections,
    pub(crate) stop: StopHandle,
    pub(crate) local_addrs: Vec<SocketAddr>,
}

impl Context {
    /// The active connections.
    pub fn active_connections(&self) -> &Connections {
        &self.connections
    }

    /// A handle that stops the loop.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Asks the loop to stop (gracefully) after the current hook.
    pub fn stop(&self) {
        self.stop.stop()
    }

    /// The addresses the server listens on (empty for a client).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }
}
