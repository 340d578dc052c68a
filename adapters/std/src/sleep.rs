//! Where a connection thread sleeps between messages, and what wakes it:
//! its [`Mailbox`], the [`Readiness`] of its socket, and [`sleep`].
//!
//! **The rule.** A thread with nothing to do *arms* its socket (registers
//! it with the reactor's readiness set) and sleeps on its mailbox. When
//! bytes arrive (or the peer closes), the reactor *disarms* the socket and
//! marks the mailbox readable, which wakes the thread; the thread moves the
//! bytes itself, with blocking calls under its deadlines, and arms again
//! only before it next sleeps. Other connections queue messages in the
//! mailbox; a stop sets the owner's draining flag and wakes every mailbox.
//! Nothing else wakes a thread: no timer, unless a `loop_pass` interval or
//! an idle deadline asks for one.
//!
//! **Invariant: no wake-up is lost.** Arming, disarming and every change to
//! the inbox happen under the mailbox's lock, the draining flag is set
//! before the mailboxes are woken, and registering a socket that already
//! has bytes reports them at once: between a thread's last look and its
//! sleep nothing can arrive unseen. Bytes already read ahead into the
//! connection's transport are not the socket's any more, and no readiness
//! would report them: a thread with bytes ahead never sleeps.

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::connections::lock;
use crate::id::ConnId;

/// What a sleeping connection thread finds when it wakes.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// Its socket became readable (a message began, or the peer closed).
    pub(crate) readable: bool,
    /// Its socket is registered with the reactor: the next byte wakes it.
    armed: bool,
    /// Messages other connections queued for it.
    pub(crate) queued: VecDeque<Arc<[u8]>>,
}

/// Where a connection thread sleeps between messages (or what wakes a
/// connection on an event thread).
#[derive(Debug)]
pub(crate) struct Mailbox {
    inbox: Mutex<Inbox>,
    changed: Condvar,
    capacity: usize,
    /// The owner's: set when its connections are to finish and end.
    draining: Arc<AtomicBool>,
    /// A connection on an event thread: tells its thread, after each change.
    wake: Option<Wake>,
}

/// What tells an event thread that a connection's mailbox changed.
pub(crate) struct Wake(Box<dyn Fn() + Send + Sync>);

impl Wake {
    pub(crate) fn new(wake: impl Fn() + Send + Sync + 'static) -> Self {
        Self(Box::new(wake))
    }
}

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wake")
    }
}

impl Mailbox {
    pub(crate) fn new(capacity: usize, draining: Arc<AtomicBool>) -> Self {
        Self {
            inbox: Mutex::new(Inbox::default()),
            changed: Condvar::new(),
            capacity: capacity.max(1),
            draining,
            wake: None,
        }
    }

    /// The mailbox of a connection on an event thread: `wake` tells its
    /// thread of every change.
    pub(crate) fn waking(capacity: usize, draining: Arc<AtomicBool>, wake: Wake) -> Self {
        Self {
            wake: Some(wake),
            ..Self::new(capacity, draining)
        }
    }

    fn notify(&self) {
        self.changed.notify_one();
        if let Some(Wake(wake)) = &self.wake {
            wake();
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inbox> {
        lock(&self.inbox)
    }

    /// True once the owner is stopping.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Changes the inbox and wakes the thread.
    pub(crate) fn post(&self, change: impl FnOnce(&mut Inbox)) {
        change(&mut self.lock());
        self.notify();
    }

    /// Queues a message; false when the queue is full.
    pub(crate) fn queue(&self, msg: Arc<[u8]>) -> bool {
        let mut inbox = self.lock();
        if inbox.queued.len() >= self.capacity {
            return false;
        }
        inbox.queued.push_back(msg);
        drop(inbox);
        self.notify();
        true
    }

    /// True when something waits: bytes, queued messages, or a stop.
    fn has_news(&self, inbox: &Inbox) -> bool {
        inbox.readable || !inbox.queued.is_empty() || self.is_draining()
    }

    /// Sleeps until there is news, or `until` passes.
    fn wait<'m>(
        &'m self,
        mut inbox: MutexGuard<'m, Inbox>,
        until: Option<Instant>,
    ) -> MutexGuard<'m, Inbox> {
        while !self.has_news(&inbox) {
            inbox = match until {
                None => self.changed.wait(inbox).unwrap_or_else(|e| e.into_inner()),
                Some(until) => {
                    let Some(left) = until.checked_duration_since(Instant::now()) else {
                        break;
                    };
                    self.changed
                        .wait_timeout(inbox, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        inbox
    }
}

/// How connection threads register and deregister their sockets with the
/// reactor's readiness set.
#[derive(Debug)]
pub(crate) struct Readiness {
    registry: Registry,
}

impl Readiness {
    pub(crate) fn new(registry: Registry) -> Self {
        Self { registry }
    }

    /// Registers `socket` so that its next readiness wakes connection `id`
    /// (once). Call with the connection's inbox locked.
    fn arm(&self, inbox: &mut Inbox, id: ConnId, socket: &TcpStream) -> io::Result<()> {
        if !inbox.armed {
            let token = Token(usize::try_from(id.as_u64()).unwrap_or(0));
            self.registry.register(
                &mut SourceFd(&socket.as_raw_fd()),
                token,
                Interest::READABLE,
            )?;
            inbox.armed = true;
        }
        Ok(())
    }

    /// Deregisters `socket` if it is armed: its thread is about to move
    /// bytes itself. Call with the connection's inbox locked.
    fn disarm(&self, inbox: &mut Inbox, socket: &TcpStream) {
        if inbox.armed {
            inbox.armed = false;
            if let Err(e) = self.registry.deregister(&mut SourceFd(&socket.as_raw_fd())) {
                log::debug!("deregistering a socket: {e}");
            }
        }
    }

    /// The reactor's side: `socket` is readable. Wakes its thread if it is
    /// armed (a thread moving bytes itself is not woken for its own).
    pub(crate) fn readable(&self, mailbox: &Mailbox, socket: &TcpStream) {
        mailbox.post(|inbox| {
            if inbox.armed {
                self.disarm(inbox, socket);
                inbox.readable = true;
            }
        });
    }

    /// The registry, for the reactor's own registrations (listeners).
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// What ended a connection thread's sleep.
#[derive(Debug)]
pub(crate) enum Woken {
    /// A message began (or the peer closed).
    Readable,
    /// Other connections queued these messages.
    Queued(VecDeque<Arc<[u8]>>),
    /// `until` came.
    Timer,
    /// The owner is stopping.
    Stop,
}

/// Sleeps until connection `id`'s socket has bytes, a message is queued
/// for it, its owner stops, or `until`. `ahead`: bytes of the peer's wait
/// in the connection's transport already, so it does not sleep at all.
pub(crate) fn sleep(
    mailbox: &Mailbox,
    readiness: &Readiness,
    id: ConnId,
    socket: &TcpStream,
    ahead: bool,
    until: Option<Instant>,
) -> io::Result<Woken> {
    if ahead {
        return Ok(Woken::Readable);
    }
    let mut inbox = mailbox.lock();
    if !mailbox.has_news(&inbox) {
        readiness.arm(&mut inbox, id, socket)?;
        inbox = mailbox.wait(inbox, until);
    }
    // From here on this thread moves the bytes: no wake-up for them.
    readiness.disarm(&mut inbox, socket);
    // On a stop, what was queued still goes out and a message that began
    // arriving is still taken; then the loop ends.
    if !inbox.queued.is_empty() {
        return Ok(Woken::Queued(std::mem::take(&mut inbox.queued)));
    }
    if std::mem::take(&mut inbox.readable) {
        return Ok(Woken::Readable);
    }
    if mailbox.is_draining() {
        return Ok(Woken::Stop);
    }
    Ok(Woken::Timer)
}
