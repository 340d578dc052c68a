//! The active connections of a server or client: the registry through which
//! connections reach each other, the connection threads, and graceful stop.

use std::collections::{HashMap, VecDeque};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::conn::{run_connection, Attached, Conn, Handler};
use crate::error::{Deadline, Error};
use crate::ConnId;

/// How long a forced close waits for threads to notice their closed sockets.
const FORCED_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A cloneable handle that asks a server's or client's loop to stop.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Asks the loop to stop; `start` then stops gracefully and returns.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Entry {
    queue: SyncSender<Arc<[u8]>>,
    /// A clone of the socket, to close it from outside on a forced stop.
    stream: Option<TcpStream>,
    peer: SocketAddr,
}

/// State shared by a server or client and its connection threads.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    conns: Mutex<HashMap<ConnId, Entry>>,
    draining: AtomicBool,
    next_id: AtomicU64,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<ConnId, Entry>> {
        // A panic while holding the lock leaves the map consistent.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn new_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// The registry of active connections of a server or client (the
/// reference's `active_connections`), by id. Cloneable; usable from any
/// thread, hooks included.
///
/// Messages sent through it are queued (up to
/// [`set_queue_len`](crate::Server::set_queue_len) per connection) and
/// transmitted by the receiving connection's own thread between its
/// messages, at its next loop pass.
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

    /// Queues `msg` for connection `id`.
    pub fn send_to(&self, id: ConnId, msg: &[u8]) -> Result<(), Error> {
        let conns = self.shared.conns();
        let entry = conns.get(&id).ok_or(Error::UnknownConnection(id))?;
        match entry.queue.try_send(Arc::from(msg)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Error::QueueFull(id)),
            Err(TrySendError::Disconnected(_)) => Err(Error::UnknownConnection(id)),
        }
    }

    /// Queues `msg` for every active connection but `except`; returns how
    /// many took it (a connection with a full queue is skipped).
    pub fn broadcast(&self, msg: &[u8], except: Option<ConnId>) -> usize {
        let msg: Arc<[u8]> = Arc::from(msg);
        let conns = self.shared.conns();
        conns
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter(|(_, e)| e.queue.try_send(msg.clone()).is_ok())
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

/// A connection thread's end.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) id: ConnId,
    pub(crate) peer: SocketAddr,
    pub(crate) result: Result<(), Error>,
}

/// Frees the connection's slot and reports its end on every exit path of
/// its thread, a panic included.
struct SlotGuard {
    shared: Arc<Shared>,
    ended: Sender<Ended>,
    id: ConnId,
    peer: SocketAddr,
    result: Option<Result<(), Error>>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.shared.conns().remove(&self.id);
        let result = self
            .result
            .take()
            .unwrap_or_else(|| Err(Error::Panicked("connection thread ended abnormally".into())));
        let _ = self.ended.send(Ended {
            id: self.id,
            peer: self.peer,
            result,
        });
    }
}

/// The factory of handlers, one per connection.
pub(crate) type Factory = Arc<dyn Fn() -> Box<dyn Handler> + Send + Sync>;

/// The connection threads of a server or client.
pub(crate) struct Pool {
    pub(crate) shared: Arc<Shared>,
    stop: StopHandle,
    threads: HashMap<ConnId, JoinHandle<()>>,
    ended_tx: Sender<Ended>,
    ended_rx: Receiver<Ended>,
    /// Ends reaped but not yet handed out.
    pending: VecDeque<Ended>,
}

impl Pool {
    pub(crate) fn new(shared: Arc<Shared>, stop: StopHandle) -> Self {
        let (ended_tx, ended_rx) = mpsc::channel();
        Self {
            shared,
            stop,
            threads: HashMap::new(),
            ended_tx,
            ended_rx,
            pending: VecDeque::new(),
        }
    }

    /// Active connections (registered and not yet ended).
    pub(crate) fn active(&self) -> usize {
        self.shared.conns().len()
    }

    /// Registers `conn`, calls `before_start`, and runs `conn`'s loop with
    /// `handler` on a thread of its own.
    pub(crate) fn spawn(
        &mut self,
        mut conn: Conn,
        mut handler: Box<dyn Handler>,
        queue_len: usize,
        before_start: impl FnOnce(ConnId),
    ) -> std::io::Result<()> {
        let id = conn.id();
        let peer = conn.peer_addr();
        let (queue, inbox) = mpsc::sync_channel(queue_len.max(1));
        let stream = conn.tcp_stream().try_clone().ok();
        self.shared.conns().insert(
            id,
            Entry {
                queue,
                stream,
                peer,
            },
        );
        conn.attach(Attached {
            shared: self.shared.clone(),
            inbox,
            stop: self.stop.clone(),
        });
        let guard = SlotGuard {
            shared: self.shared.clone(),
            ended: self.ended_tx.clone(),
            id,
            peer,
            result: None,
        };
        before_start(id);
        let spawned = thread::Builder::new()
            .name(format!("tinyproto-conn-{}", id.0))
            .spawn(move || {
                // Moves the whole guard in (not just the field assigned below).
                let mut guard = guard;
                let result = run_connection(&mut conn, &mut *handler);
                drop(conn);
                drop(handler);
                guard.result = Some(result);
            });
        match spawned {
            Ok(handle) => {
                self.threads.insert(id, handle);
                Ok(())
            }
            // The closure (and its guard) was dropped: the slot is free again.
            Err(e) => Err(e),
        }
    }

    /// Collects ended connections, waiting up to `wait` for the first.
    pub(crate) fn reap(&mut self, wait: Duration) -> Vec<Ended> {
        let mut ended: Vec<Ended> = self.pending.drain(..).collect();
        if ended.is_empty() && !wait.is_zero() {
            match self.ended_rx.recv_timeout(wait) {
                Ok(e) => ended.push(e),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
        }
        ended.extend(self.ended_rx.try_iter());
        for e in &ended {
            if let Some(handle) = self.threads.remove(&e.id) {
                // The thread has reported its end; it only has to return.
                let _ = handle.join();
            }
        }
        ended
    }

    /// Waits up to `timeout` for connection `id` to end; its result.
    pub(crate) fn join(&mut self, id: ConnId, timeout: Duration) -> Option<Result<(), Error>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut found = None;
            for e in self.reap(Duration::ZERO) {
                if e.id == id && found.is_none() {
                    found = Some(e.result);
                } else {
                    self.pending.push_back(e);
                }
            }
            if found.is_some() {
                return found;
            }
            let now = Instant::now();
            if now >= deadline || !self.threads.contains_key(&id) {
                return None;
            }
            match self
                .ended_rx
                .recv_timeout((deadline - now).min(Duration::from_millis(50)))
            {
                Ok(e) => self.pending.push_back(e),
                Err(_) => continue,
            }
        }
    }

    /// Graceful stop: connections finish the message in flight and end
    /// (their `post_loop` runs); after `timeout` the rest are closed.
    /// `on_end` sees every connection's end.
    pub(crate) fn drain(&mut self, timeout: Duration, on_end: &mut dyn FnMut(Ended)) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while !self.threads.is_empty() || !self.pending.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            for e in self.reap((deadline - now).min(Duration::from_millis(50))) {
                on_end(e);
            }
        }
        if self.threads.is_empty() {
            return;
        }
        log::warn!(
            "{} connection(s) still running after the drain timeout: closing them",
            self.threads.len()
        );
        self.close_all_sockets();
        let deadline = Instant::now() + FORCED_CLOSE_GRACE;
        while !self.threads.is_empty() && Instant::now() < deadline {
            for e in self.reap(Duration::from_millis(50)) {
                on_end(e);
            }
        }
        let stuck: Vec<ConnId> = self.threads.keys().copied().collect();
        for id in stuck {
            log::error!("{id}: thread did not end; leaving it behind");
            self.threads.remove(&id);
            let peer = self
                .shared
                .conns()
                .get(&id)
                .map(|e| e.peer)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            on_end(Ended {
                id,
                peer,
                result: Err(Error::Timeout(Deadline::Drain)),
            });
        }
    }

    /// Shuts down every active connection's socket (their threads then end).
    pub(crate) fn close_all_sockets(&self) {
        for entry in self.shared.conns().values() {
            if let Some(stream) = &entry.stream {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shared.draining.store(true, Ordering::SeqCst);
            self.close_all_sockets();
        }
    }
}
