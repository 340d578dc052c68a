//! The connections of a server or client: one thread per connection, or a
//! share of the event threads (`events`); their registration, their end
//! (reported on the loop's channel, a panic included) and the graceful stop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::SharedConfig;
use crate::conn::{Attached, Conn, Owner};
use crate::conn_loop::run_connection;
use crate::connections::{Ended, Entry, LoopEvent, Shared, StopHandle};
use crate::error::{Deadline, Error};
use crate::events::{EventHandler, EventThreads, NewConn};
use crate::handler::Handler;
use crate::id::ConnId;
use crate::reactor::Reactor;
use crate::sleep::Mailbox;

/// How long a forced close waits for threads to notice their closed sockets.
const FORCED_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Frees the connection's slot and reports its end on every exit path of
/// its thread, a panic included.
struct SlotGuard {
    shared: Arc<Shared>,
    events: Sender<LoopEvent>,
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
        let _ = self.events.send(LoopEvent::Ended(Ended {
            id: self.id,
            peer: self.peer,
            result,
        }));
    }
}

/// The connection threads of a server or client, and the channel on which
/// its loop is woken (threads ending, listeners readable, a stop).
pub(crate) struct Pool {
    pub(crate) shared: Arc<Shared>,
    stop: StopHandle,
    threads: HashMap<ConnId, JoinHandle<()>>,
    events_tx: Sender<LoopEvent>,
    events_rx: Receiver<LoopEvent>,
    /// Events taken while looking for something else.
    pending: VecDeque<LoopEvent>,
    /// Started with the first connection.
    reactor: Option<Reactor>,
    /// Started with the first connection served on them.
    event_threads: Option<EventThreads>,
    /// The connections on event threads, until their end is handed out.
    evented: HashSet<ConnId>,
    /// Threads given up on (left behind by a drain, or never started):
    /// their late ends were reported already, or never should be.
    abandoned: HashSet<ConnId>,
}

impl Pool {
    pub(crate) fn new() -> Self {
        let (events_tx, events_rx) = mpsc::channel();
        Self {
            shared: Arc::new(Shared::default()),
            stop: StopHandle::new(events_tx.clone()),
            threads: HashMap::new(),
            events_tx,
            events_rx,
            pending: VecDeque::new(),
            reactor: None,
            event_threads: None,
            evented: HashSet::new(),
            abandoned: HashSet::new(),
        }
    }

    pub(crate) fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The reactor, started on first use.
    pub(crate) fn reactor(&mut self) -> std::io::Result<&Reactor> {
        if self.reactor.is_none() {
            self.reactor = Some(Reactor::start(
                self.shared.clone(),
                self.events_tx.clone(),
                self.stop.clone(),
            )?);
        }
        Ok(self.reactor.as_ref().expect("started above"))
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
        let readiness = self.reactor()?.readiness();
        let id = conn.id();
        let peer = conn.peer_addr();
        let mailbox = Arc::new(Mailbox::new(queue_len, self.shared.draining_flag()));
        let entry = Entry::new(
            mailbox.clone(),
            conn.shared_socket(),
            peer,
            conn.config().duplex,
        );
        self.shared.conns().insert(id, entry);
        // Registered first, so that nothing sent to every connection misses
        // it; then this side's greeting goes out at once (a client's greeting
        // need not wait for the thread to start; a no-op if greeted already).
        // (Over TLS the greeting follows the handshake, on the connection's
        // own thread: never a round trip on the accepting loop.)
        if !conn.is_tls() {
            conn.send_greeting();
        }
        conn.attach(Attached {
            shared: self.shared.clone(),
            mailbox,
            readiness,
        });
        let guard = SlotGuard {
            shared: self.shared.clone(),
            events: self.events_tx.clone(),
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
            // The closure (and its guard) was dropped: the slot is free again,
            // and the end its guard reports is not a connection's end.
            Err(e) => {
                self.abandoned.insert(id);
                Err(e)
            }
        }
    }

    /// Registers a connection over `stream` and hands it to an event thread
    /// (started on first use) with `handler`, `before_start` first; its id.
    /// `caller` is told how its greeting went (a client's `connect_to`).
    pub(crate) fn serve_on_events(
        &mut self,
        (stream, peer): (TcpStream, SocketAddr),
        cfg: SharedConfig,
        owner: Owner,
        handler: Box<dyn EventHandler>,
        caller: Option<Sender<Result<(), Error>>>,
        before_start: impl FnOnce(ConnId),
    ) -> std::io::Result<ConnId> {
        if self.event_threads.is_none() {
            self.event_threads = Some(EventThreads::start(
                self.shared.clone(),
                self.events_tx.clone(),
            )?);
        }
        let lane = self
            .event_threads
            .as_mut()
            .expect("started above")
            .next_lane();
        let id = self.shared.new_id();
        let mailbox = Arc::new(Mailbox::waking(
            cfg.queue_len,
            self.shared.draining_flag(),
            lane.wake_for(id),
        ));
        let stream = Arc::new(stream);
        let entry = Entry::new(mailbox.clone(), stream.clone(), peer, cfg.duplex);
        self.shared.conns().insert(id, entry);
        self.evented.insert(id);
        before_start(id);
        let handed = lane.hand_over(NewConn {
            id,
            stream,
            peer,
            cfg,
            owner,
            handler,
            mailbox,
            caller,
        });
        if !handed {
            // Its thread has ended: the connection never starts.
            self.shared.conns().remove(&id);
            self.evented.remove(&id);
            return Err(std::io::Error::other("its event thread has ended"));
        }
        Ok(id)
    }

    /// Forgets connection `id` (on the event threads, whose greeting
    /// failed): its end is not a connection's end, and is not reported.
    pub(crate) fn abandon(&mut self, id: ConnId) {
        self.evented.remove(&id);
        self.abandoned.insert(id);
    }

    /// The next event, waiting until `until` (`None`: until one comes). An
    /// ended connection's thread is joined before its end is handed out.
    pub(crate) fn next_event(&mut self, until: Option<Instant>) -> Option<LoopEvent> {
        loop {
            let event = self.next_raw_event(until)?;
            match &event {
                LoopEvent::Ended(ended) if self.abandoned.remove(&ended.id) => continue,
                LoopEvent::Ended(ended) if self.evented.remove(&ended.id) => {}
                LoopEvent::Ended(ended) => {
                    if let Some(handle) = self.threads.remove(&ended.id) {
                        // The thread has reported its end; it only has to return.
                        let _ = handle.join();
                    }
                }
                _ => {}
            }
            return Some(event);
        }
    }

    fn next_raw_event(&mut self, until: Option<Instant>) -> Option<LoopEvent> {
        Some(match self.pending.pop_front() {
            Some(event) => event,
            None => match until {
                None => self.events_rx.recv().ok()?,
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    match self.events_rx.recv_timeout(left) {
                        Ok(event) => event,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                            return None
                        }
                    }
                }
            },
        })
    }

    /// Waits up to `timeout` for connection `id` to end; its result. Other
    /// events are kept for the loop.
    pub(crate) fn join(&mut self, id: ConnId, timeout: Duration) -> Option<Result<(), Error>> {
        let deadline = Instant::now() + timeout;
        let mut kept = VecDeque::new();
        let mut found = None;
        while found.is_none()
            && (self.threads.contains_key(&id)
                || self.evented.contains(&id)
                || self.has_pending_end(id))
        {
            let Some(event) = self.next_event(Some(deadline)) else {
                break;
            };
            match event {
                LoopEvent::Ended(e) if e.id == id => found = Some(e.result),
                other => kept.push_back(other),
            }
        }
        kept.extend(self.pending.drain(..));
        self.pending = kept;
        found
    }

    fn has_pending_end(&self, id: ConnId) -> bool {
        self.pending
            .iter()
            .any(|e| matches!(e, LoopEvent::Ended(e) if e.id == id))
    }

    /// Graceful stop: connections finish the message in flight and end
    /// (their `post_loop` runs); after `timeout` the rest are closed.
    /// `on_end` sees every connection's end.
    pub(crate) fn drain(&mut self, timeout: Duration, on_end: &mut dyn FnMut(Ended)) {
        self.shared.start_draining();
        let deadline = Instant::now() + timeout;
        self.collect_ends(deadline, on_end);
        if self.threads.is_empty() && self.evented.is_empty() {
            return;
        }
        log::warn!(
            "{} connection(s) still running after the drain timeout: closing them",
            self.threads.len() + self.evented.len()
        );
        self.close_all_sockets();
        self.collect_ends(Instant::now() + FORCED_CLOSE_GRACE, on_end);
        let stuck: Vec<ConnId> = self.threads.keys().chain(&self.evented).copied().collect();
        for id in stuck {
            log::error!("{id}: did not end; leaving it behind");
            self.threads.remove(&id);
            self.evented.remove(&id);
            self.abandoned.insert(id);
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

    /// After a drain: a new registry (and reactor, when next needed) for
    /// later connections; the stop handle stays.
    pub(crate) fn renew(&mut self) {
        self.reactor = None;
        self.event_threads = None;
        self.shared = Arc::new(self.shared.successor());
        self.pending.retain(|e| !matches!(e, LoopEvent::Ended(_)));
    }

    /// Hands every end to `on_end` until no thread is left or `deadline`.
    fn collect_ends(&mut self, deadline: Instant, on_end: &mut dyn FnMut(Ended)) {
        while !self.threads.is_empty()
            || !self.evented.is_empty()
            || self
                .pending
                .iter()
                .any(|e| matches!(e, LoopEvent::Ended(_)))
        {
            match self.next_event(Some(deadline)) {
                Some(LoopEvent::Ended(e)) => on_end(e),
                Some(_) => {} // stopping: no accepts, no second stop
                None => break,
            }
        }
    }

    /// Shuts down every active connection's socket (their threads then end).
    pub(crate) fn close_all_sockets(&self) {
        for entry in self.shared.conns().values() {
            let _ = entry.stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.threads.is_empty() || !self.evented.is_empty() {
            self.shared.start_draining();
            self.close_all_sockets();
        }
    }
}
