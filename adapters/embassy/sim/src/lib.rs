//! A virtual clock for embassy-time: time stands still while any task can
//! run and jumps to the next timer when none can, so a simulated minute of
//! retransmissions costs only the CPU it needs, and a seed replays exactly.
//!
//! Each thread has its own clock (a seed runs on one thread), so seeds can
//! run side by side and each starts from zero.

use std::cell::RefCell;
use std::task::Waker;

use embassy_time_queue_utils::Queue;

struct Clock {
    now: u64,
    timers: Queue,
}

thread_local! {
    static CLOCK: RefCell<Clock> = const {
        RefCell::new(Clock { now: 0, timers: Queue::new() })
    };
}

struct VirtualDriver;

impl embassy_time_driver::Driver for VirtualDriver {
    fn now(&self) -> u64 {
        CLOCK.with(|c| c.borrow().now)
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        CLOCK.with(|c| {
            let mut c = c.borrow_mut();
            if at <= c.now {
                // Already due: the idle step only looks forward.
                waker.wake_by_ref();
            } else {
                c.timers.schedule_wake(at, waker);
            }
        })
    }
}

embassy_time_driver::time_driver_impl!(static DRIVER: VirtualDriver = VirtualDriver);

/// Starts this thread's clock again at zero with no timers (before a seed).
pub fn reset() {
    CLOCK.with(|c| {
        *c.borrow_mut() = Clock {
            now: 0,
            timers: Queue::new(),
        }
    });
}

/// Nothing can run: moves the clock to the next timer and wakes it. Panics
/// if there is none (every task waits on something that cannot happen).
pub fn advance() {
    CLOCK.with(|c| {
        let mut c = c.borrow_mut();
        let now = c.now;
        let next = c.timers.next_expiration(now);
        assert!(next != u64::MAX, "deadlock: no task ready and no timer set");
        c.now = next;
        c.timers.next_expiration(next);
    })
}
