//! The reactor: one readiness set (epoll on Linux, kqueue on macOS and the
//! BSDs, through `mio`) per server or client, and the one thread that waits
//! on it.
//!
//! The connection threads arm their sockets in it before they sleep; the
//! reactor wakes the thread of each socket that becomes readable. The rule
//! and its invariant (no wake-up lost) are `sleep`'s.
//!
//! Listeners stay registered; their readiness goes to the server's loop as
//! [`LoopEvent::Acceptable`]. File descriptors: one per connection (the
//! socket, shared by its thread and the registry), plus two for the
//! readiness set and one for the reactor's waker.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::connections::{LoopEvent, Shared, StopHandle};
use crate::id::ConnId;
use crate::sleep::Readiness;

/// Wakes the reactor thread to stop.
const WAKER: Token = Token(usize::MAX);

/// Listener `i` has token `LISTENERS - i`; connection ids count up from 1.
const LISTENERS: usize = usize::MAX - 1;

/// At most this many listeners per server.
const MAX_LISTENERS: usize = 1 << 16;

/// The readiness set of a server or client and the thread that waits on it.
#[derive(Debug)]
pub(crate) struct Reactor {
    readiness: Arc<Readiness>,
    waker: Waker,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reactor {
    /// Starts the reactor thread. Listener readiness goes to `events`; if
    /// waiting for readiness ever fails, the thread stops its owner with
    /// `stop` (nothing would wake the connections or the loop any more).
    pub(crate) fn start(
        shared: Arc<Shared>,
        events: Sender<LoopEvent>,
        stop: StopHandle,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let readiness = Arc::new(Readiness::new(poll.registry().try_clone()?));
        let waker = Waker::new(poll.registry(), WAKER)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = stopping.clone();
            let readiness = readiness.clone();
            thread::Builder::new()
                .name("tinyproto-reactor".into())
                .spawn(move || run(poll, &readiness, &shared, &events, &stop, &stopping))?
        };
        Ok(Self {
            readiness,
            waker,
            stopping,
            thread: Some(thread),
        })
    }

    /// What connection threads arm and disarm their sockets with.
    pub(crate) fn readiness(&self) -> Arc<Readiness> {
        self.readiness.clone()
    }

    /// Reports the readiness of `listener` (number `index`, non-blocking)
    /// to the loop, edge-triggered: accept until `WouldBlock` each time.
    pub(crate) fn add_listener(&self, index: usize, listener: &TcpListener) -> io::Result<()> {
        if index >= MAX_LISTENERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many listeners",
            ));
        }
        self.readiness.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            Token(LISTENERS - index),
            Interest::READABLE,
        )
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the reactor to stop it: {e}");
            return;
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reactor thread: waits for readiness and hands it on. No timeout: it
/// sleeps until a socket or the waker has something.
fn run(
    mut poll: Poll,
    readiness: &Readiness,
    shared: &Shared,
    events: &Sender<LoopEvent>,
    stop: &StopHandle,
    stopping: &AtomicBool,
) {
    let mut ready = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut ready, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("reactor: waiting for readiness failed: {e}; stopping");
            // Nothing would wake the connections or the loop any more.
            stop.stop();
            shared.start_draining();
            return;
        }
        for event in ready.iter() {
            match event.token() {
                WAKER if stopping.load(Ordering::SeqCst) => return,
                WAKER => {}
                Token(t) if t > LISTENERS - MAX_LISTENERS => {
                    let _ = events.send(LoopEvent::Acceptable(LISTENERS - t));
                }
                Token(t) => {
                    let id = ConnId(t as u64);
                    let conns = shared.conns();
                    let Some(entry) = conns.get(&id) else {
                        continue; // ended meanwhile
                    };
                    readiness.readable(&entry.mailbox, &entry.stream);
                }
            }
        }
    }
}
