//! A minimal embassy-time driver on the Cortex-M SysTick: a 1 kHz tick
//! counter and embassy's timer queue, checked on every tick. It needs
//! nothing but the core, which is what a board without an embassy HAL (or
//! the emulated LM3S6965 and MPS2 boards of the examples) offers. Boards
//! with an embassy HAL (embassy-stm32, embassy-rp, embassy-nrf) get a better
//! driver from the HAL (a low-power RTC or timer, no interrupt every
//! millisecond): leave this crate out there.
//!
//! Add it as a dependency, start it once with [`init`], and embassy-time
//! (`Timer`, `Instant`, the deadlines of tinyproto-embassy) works:
//!
//! ```ignore
//! let core = cortex_m::Peripherals::take().unwrap();
//! systick_time_driver::init(core.SYST, 16_000_000); // the core clock in Hz
//! ```
//!
//! It owns the `SysTick` exception handler, and it fixes embassy-time's tick
//! rate at 1 kHz (`embassy-time-driver/tick-hz-1_000`).
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

use core::cell::{Cell, RefCell};
use core::task::Waker;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;
use critical_section::Mutex;
use embassy_time_driver::{Driver, TICK_HZ};
use embassy_time_queue_utils::Queue;

struct SysTickDriver {
    ticks: Mutex<Cell<u64>>,
    queue: Mutex<RefCell<Queue>>,
}

impl Driver for SysTickDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.ticks.borrow(cs).get())
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let now = self.ticks.borrow(cs).get();
            let mut queue = self.queue.borrow_ref_mut(cs);
            queue.schedule_wake(at, waker);
            // Wakes whatever is due already; the rest waits for a tick.
            queue.next_expiration(now);
        })
    }
}

embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver {
    ticks: Mutex::new(Cell::new(0)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

/// Starts SysTick at `TICK_HZ` from a core clock of `core_hz`.
pub fn init(mut syst: SYST, core_hz: u32) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(core_hz / TICK_HZ as u32 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

#[exception]
fn SysTick() {
    critical_section::with(|cs| {
        let ticks = DRIVER.ticks.borrow(cs);
        ticks.set(ticks.get() + 1);
        DRIVER.queue.borrow_ref_mut(cs).next_expiration(ticks.get());
    });
}
