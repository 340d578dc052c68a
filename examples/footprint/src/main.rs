//! Footprint benchmark: a tinyproto echo server on a Cortex-M4F.
//!
//! It greets, then receives each message into a 256-byte buffer and
//! transmits it back, over a UART reached through memory-mapped registers
//! (volatile accesses, so the optimiser cannot see through the transport and
//! nothing of the protocol is optimised away). Three builds, chosen by
//! feature, are compared by `.ci/footprint.sh`:
//!
//! - default: `tinyproto::blocking::Connection` (the driver);
//! - `sans-io`: the same sans-IO `Machine` the driver runs, driven by a
//!   polling superloop that never waits, no driver;
//! - `baseline`: the same UART echo without tinyproto.
//!
//! tinyproto's state lives in `#[no_mangle]` statics named `TINYPROTO_*`, so
//! their sizes can be read from the symbol table. The program is built to be
//! measured; it also runs on a part whose USART2 sits at the STM32F4 address.

#![no_std]
#![no_main]

use cortex_m_rt::entry;
use panic_halt as _;

/// A polled UART at the STM32F4 USART2 registers.
mod uart {
    use core::ptr::{read_volatile, write_volatile};

    const SR: *const u32 = 0x4000_4400 as *const u32;
    const DR: *mut u32 = 0x4000_4404 as *mut u32;
    const RXNE: u32 = 1 << 5;
    const TXE: u32 = 1 << 7;

    fn status() -> u32 {
        // SAFETY: a device register, always readable.
        unsafe { read_volatile(SR) }
    }

    /// Reads bytes while some are waiting; returns how many (maybe 0).
    pub fn try_read(buf: &mut [u8]) -> usize {
        let mut n = 0;
        for slot in buf {
            if status() & RXNE == 0 {
                break;
            }
            // SAFETY: a device register; reading it takes the byte.
            *slot = unsafe { read_volatile(DR) } as u8;
            n += 1;
        }
        n
    }

    /// Writes bytes while the transmitter takes them; returns how many.
    pub fn try_write(buf: &[u8]) -> usize {
        let mut n = 0;
        for &byte in buf {
            if status() & TXE == 0 {
                break;
            }
            // SAFETY: a device register; writing it sends the byte.
            unsafe { write_volatile(DR, u32::from(byte)) };
            n += 1;
        }
        n
    }

    /// Waits until at least one byte moved (none for an empty buffer).
    #[cfg_attr(feature = "sans-io", allow(dead_code))]
    pub fn read(buf: &mut [u8]) -> usize {
        loop {
            let n = try_read(buf);
            if n > 0 || buf.is_empty() {
                return n;
            }
        }
    }

    /// Waits until at least one byte moved (none for an empty buffer).
    #[cfg_attr(feature = "sans-io", allow(dead_code))]
    pub fn write(buf: &[u8]) -> usize {
        loop {
            let n = try_write(buf);
            if n > 0 || buf.is_empty() {
                return n;
            }
        }
    }
}

/// The application's message buffer (not tinyproto's: it keeps none).
static mut BUF: [u8; 256] = [0; 256];

#[entry]
fn main() -> ! {
    // SAFETY: `main` runs once and is the only user of `BUF`.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    app::run(buf);
    loop {
        cortex_m::asm::wfi();
    }
}

#[cfg(not(any(feature = "sans-io", feature = "baseline")))]
mod app {
    use core::convert::Infallible;
    use core::mem::MaybeUninit;

    use tinyproto::blocking::Connection;
    use tinyproto::embedded_io::{ErrorType, Read, Write};

    use crate::uart;

    /// The UART as an `embedded_io` transport.
    pub struct Uart;

    impl ErrorType for Uart {
        type Error = Infallible;
    }

    impl Read for Uart {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
            Ok(uart::read(buf))
        }
    }

    impl Write for Uart {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
            Ok(uart::write(buf))
        }

        fn flush(&mut self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    /// All of tinyproto's state: the connection (its transport is a ZST).
    #[no_mangle]
    static mut TINYPROTO_CONNECTION: MaybeUninit<Connection<Uart>> = MaybeUninit::uninit();

    pub fn run(buf: &mut [u8]) {
        // SAFETY: called once, from `main`; nothing else names the static.
        let conn = unsafe {
            (*core::ptr::addr_of_mut!(TINYPROTO_CONNECTION)).write(Connection::new(Uart))
        };
        if conn.greet().is_err() {
            return;
        }
        loop {
            match conn.receive(buf) {
                Ok(msg) => {
                    if let Err(e) = conn.transmit(msg) {
                        if !e.is_recoverable() {
                            return;
                        }
                    }
                }
                Err(e) if e.is_recoverable() => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(all(feature = "sans-io", not(feature = "baseline")))]
mod app {
    use core::mem::MaybeUninit;

    use tinyproto::{Io, Machine, Moved, Operation, Step};

    use crate::uart;

    /// All of tinyproto's state, as a superloop keeps it between passes.
    #[no_mangle]
    static mut TINYPROTO_MACHINE: MaybeUninit<Machine> = MaybeUninit::uninit();

    /// Does what the UART can do for one step right now; `None` when it can
    /// do nothing yet (nothing to read, no room to write): no report, and
    /// the same step comes back on the next pass.
    fn poll(io: Io<'_>) -> Option<Moved> {
        match io {
            Io::Write(bytes) => match uart::try_write(bytes) {
                0 => None,
                n => Some(Moved::Wrote(n)),
            },
            Io::Read(buf) => match uart::try_read(buf) {
                0 => None,
                n => Some(Moved::Read(n)),
            },
            Io::Flush => Some(Moved::Flushed),
        }
    }

    /// The superloop (`core/tests/superloop.rs` runs the same loop on the
    /// host, against the driver build's loop). A function of its own:
    /// inlined into the `-> !` `main`, which saves no registers, LLVM loses
    /// track of when a register dies and dispatches `field_done` through a
    /// table of 4-byte branches instead of a `tbb` (12 B more than the call
    /// costs).
    #[inline(never)]
    pub fn run(buf: &mut [u8]) {
        // SAFETY: called once, from `main`; nothing else names the static.
        let machine =
            unsafe { (*core::ptr::addr_of_mut!(TINYPROTO_MACHINE)).write(Machine::new()) };
        // The length of the message to echo once it is in; until then the
        // operation in flight is a receive (the first one greets: a failed
        // greeting is an error that ends the loop).
        let mut echo: Option<usize> = None;
        // One pass per step of the operation in flight; a firmware would do
        // its other work between the passes.
        loop {
            let op = match echo {
                None => Operation::Receive(buf),
                // `len` is within `buf` (the machine checked it); `get`
                // keeps a panic path out, as the drivers do.
                Some(len) => match buf.get(..len) {
                    Some(msg) => Operation::Transmit(msg),
                    None => return,
                },
            };
            let result = match machine.step(op) {
                // What moved is reported (nothing, if nothing could move);
                // an error in what arrived ends the operation.
                Step::Io(io) => match poll(io).map(|moved| machine.moved(moved)) {
                    Some(Err(e)) => Err(e),
                    _ => continue,
                },
                Step::Done(result) => result,
            };
            // The operation is over: a received message is echoed, and
            // after the echo (or an error the connection survives) the next
            // receive begins. An error ends the loop if it broke the
            // connection: the machine's errors do exactly when they are not
            // recoverable, so the superloop asks the machine, and builds no
            // error value it would not read.
            echo = match result {
                Err(_) if machine.is_broken() => return,
                Ok(len) if echo.is_none() => Some(len as usize),
                _ => None,
            };
        }
    }
}

#[cfg(feature = "baseline")]
mod app {
    use crate::uart;

    /// The same echo without framing.
    pub fn run(buf: &mut [u8]) {
        loop {
            let n = uart::read(buf);
            let mut sent = 0;
            while sent < n {
                sent += uart::write(&buf[sent..n]);
            }
        }
    }
}
