//! The memory budget: one bound, shared by every connection of a server or
//! client, on the bytes of incoming messages held at once.
//!
//! A connection takes a [`Lease`] on a message's announced length before it
//! answers the length (whole messages), or on its chunk buffer (chunked
//! ones), and gives it back when the message's buffer is released. A
//! message that does not fit yet waits for room before its status byte
//! goes out: the protocol's 0xFF is the backpressure, and the sender simply
//! waits for it. One that never fits (larger than the whole budget, or no
//! room before the message deadline) is answered 0x00.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::connections::lock;

/// Default memory budget of a server or client: 256 MiB of incoming
/// messages at once (sixteen messages of the default
/// [`DEFAULT_MAX_MESSAGE_LEN`](crate::DEFAULT_MAX_MESSAGE_LEN)).
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 * 1024 * 1024;

/// A waiting connection looks whether it should give up this often.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Bytes of incoming messages a server or client may hold at once.
///
/// Taking and giving back room is one atomic operation each; only a
/// connection that finds no room takes the lock, and only then does giving
/// back wake anyone.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    used: AtomicU64,
    /// Connections waiting for room.
    waiting: AtomicUsize,
    /// Held by a waiting connection from its look at `used` until it
    /// sleeps, and by a connection giving room back while it wakes the
    /// waiting ones: no wake-up falls between the two.
    wake: Mutex<()>,
    freed: Condvar,
}

/// Why a lease was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRoom {
    /// More than the whole budget: it will never fit.
    OverBudget,
    /// No room came before the deadline, or the connection gave up waiting.
    NoRoomInTime,
}

/// Bytes taken from a [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            wake: Mutex::new(()),
            freed: Condvar::new(),
        })
    }

    /// The whole budget, in bytes.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `bytes`, waiting until `deadline` for room (and giving up
    /// earlier once `give_up` says so).
    pub(crate) fn lease(
        self: &Arc<Self>,
        bytes: u64,
        deadline: Instant,
        give_up: impl Fn() -> bool,
    ) -> Result<Lease, NoRoom> {
        if bytes > self.limit {
            return Err(NoRoom::OverBudget);
        }
        if !self.try_take(bytes) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let taken = self.wait_for(bytes, deadline, give_up);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            taken?;
        }
        Ok(Lease {
            budget: self.clone(),
            bytes,
        })
    }

    /// Takes `bytes` if they fit now, without waiting (`None`: not now).
    pub(crate) fn try_lease(self: &Arc<Self>, bytes: u64) -> Result<Option<Lease>, NoRoom> {
        if bytes > self.limit {
            return Err(NoRoom::OverBudget);
        }
        Ok(self.try_take(bytes).then(|| Lease {
            budget: self.clone(),
            bytes,
        }))
    }

    /// Takes `bytes` if they fit now.
    fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used + bytes <= self.limit).then_some(used + bytes)
            })
            .is_ok()
    }

    fn wait_for(
        &self,
        bytes: u64,
        deadline: Instant,
        give_up: impl Fn() -> bool,
    ) -> Result<(), NoRoom> {
        let mut wake = lock(&self.wake);
        while !self.try_take(bytes) {
            let now = Instant::now();
            if now >= deadline || give_up() {
                return Err(NoRoom::NoRoomInTime);
            }
            let slice = (deadline - now).min(WAIT_SLICE);
            wake = self
                .freed
                .wait_timeout(wake, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Bytes leased now.
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
        if self.budget.waiting.load(Ordering::SeqCst) > 0 {
            let _wake = lock(&self.budget.wake);
            self.budget.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn test_leases_add_up_to_the_limit_and_come_back() {
        let budget = Budget::new(100);
        let far = Instant::now() + Duration::from_secs(30);
        let a = budget.lease(60, far, || false).unwrap();
        let b = budget.lease(40, far, || false).unwrap();
        assert_eq!(budget.used(), 100);
        assert_eq!(
            budget.lease(1, Instant::now(), || false).unwrap_err(),
            NoRoom::NoRoomInTime
        );
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn test_more_than_the_whole_budget_never_waits() {
        let budget = Budget::new(100);
        let far = Instant::now() + Duration::from_secs(30);
        assert_eq!(
            budget.lease(101, far, || false).unwrap_err(),
            NoRoom::OverBudget
        );
    }

    #[test]
    fn test_a_waiting_lease_gets_the_room_given_back() {
        let budget = Budget::new(100);
        let far = Instant::now() + Duration::from_secs(30);
        let held = budget.lease(100, far, || false).unwrap();
        let waiter = {
            let budget = budget.clone();
            thread::spawn(move || budget.lease(50, far, || false).map(|l| l.bytes))
        };
        // Bounded: the waiter either waits (nothing is free) or is done.
        for _ in 0..1000 {
            if waiter.is_finished() {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        assert!(!waiter.is_finished(), "nothing was free: it waits");
        drop(held);
        assert_eq!(waiter.join().unwrap(), Ok(50));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn test_a_waiting_lease_gives_up_when_asked() {
        let budget = Budget::new(10);
        let far = Instant::now() + Duration::from_secs(30);
        let _held = budget.lease(10, far, || false).unwrap();
        assert_eq!(
            budget.lease(5, far, || true).unwrap_err(),
            NoRoom::NoRoomInTime
        );
    }
}
