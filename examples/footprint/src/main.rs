//! Footprint benchmark: a tinyproto echo server on a Cortex-M4F.
//!
//! It greets, then receives each message into a 256-byte buffer and
//! transmits it back, over a UART reached through memory-mapped registers
//! (volatile accesses, so the optimiser cannot see through the transport and
//! nothing of the protocol is optimised away). Three builds, chosen by
//! feature, are compared by `.ci/footprint.sh`:
//!
//! - default: `tinyproto::blocking::Connection` (the driver);
//! - `machines`: the sans-IO `Greeting`, `Receiver` and `Sender` driven by a
//!   polling superloop, no driver;
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
    #[cfg_attr(feature = "machines", allow(dead_code))]
    pub fn read(buf: &mut [u8]) -> usize {
        loop {
            let n = try_read(buf);
            if n > 0 || buf.is_empty() {
                return n;
            }
        }
    }

    /// Waits until at least one byte moved (none for an empty buffer).
    #[cfg_attr(feature = "machines", allow(dead_code))]
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

#[cfg(not(any(feature = "machines", feature = "baseline")))]
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
                    let len = msg.len();
                    if let Err(e) = conn.transmit(&buf[..len]) {
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

#[cfg(all(feature = "machines", not(feature = "baseline")))]
mod app {
    use core::mem::MaybeUninit;
    use core::ptr::addr_of_mut;

    use tinyproto::{Greeting, GreetingStep, Receiver, RecvStep, SendStep, Sender};

    use crate::uart;

    // All of tinyproto's state, as a superloop keeps it between iterations.
    #[no_mangle]
    static mut TINYPROTO_GREETING: MaybeUninit<Greeting> = MaybeUninit::uninit();
    #[no_mangle]
    static mut TINYPROTO_RECEIVER: MaybeUninit<Receiver> = MaybeUninit::uninit();
    #[no_mangle]
    static mut TINYPROTO_SENDER: MaybeUninit<Sender> = MaybeUninit::uninit();

    fn read_byte() -> Option<u8> {
        let mut byte = [0u8];
        (uart::try_read(&mut byte) == 1).then_some(byte[0])
    }

    pub fn run(buf: &mut [u8]) {
        // SAFETY: called once, from `main`; nothing else names the statics.
        let (greeting, rx, tx) = unsafe {
            (
                (*addr_of_mut!(TINYPROTO_GREETING)).write(Greeting::new()),
                (*addr_of_mut!(TINYPROTO_RECEIVER)).write(Receiver::new()),
                (*addr_of_mut!(TINYPROTO_SENDER)).write(Sender::new(0).unwrap()),
            )
        };
        loop {
            match greeting.step() {
                GreetingStep::Write(bytes) => greeting.wrote(uart::try_write(bytes)),
                GreetingStep::Read => {
                    if let Some(byte) = read_byte() {
                        if greeting.received(byte).is_err() {
                            return;
                        }
                    }
                }
                GreetingStep::Done => break,
            }
        }
        loop {
            // Receive one message, a poll at a time.
            *rx = Receiver::new();
            let len = loop {
                match rx.step() {
                    RecvStep::ReadLength => {
                        let n = uart::try_read(rx.length_buf());
                        rx.read(n);
                    }
                    RecvStep::Decide { .. } => {
                        rx.decide(u32::try_from(buf.len()).unwrap_or(u32::MAX));
                    }
                    RecvStep::WriteStatus(status) => rx.wrote(uart::try_write(&[status.to_byte()])),
                    RecvStep::ReadPayload { offset, remaining } => {
                        let Some(dest) =
                            buf.get_mut(offset as usize..(offset + remaining) as usize)
                        else {
                            return;
                        };
                        rx.read(uart::try_read(dest));
                    }
                    RecvStep::Delivered { len } => break Some(len),
                    RecvStep::Refused { .. } => break None,
                }
            };
            let Some(len) = len else { continue };
            // Send it back.
            let Ok(sender) = Sender::new(len) else {
                return;
            };
            *tx = sender;
            loop {
                match tx.step() {
                    SendStep::WriteLength(bytes) => tx.wrote(uart::try_write(bytes)),
                    SendStep::ReadStatus => {
                        if let Some(byte) = read_byte() {
                            if tx.received_status(byte).is_err() {
                                return;
                            }
                        }
                    }
                    SendStep::WritePayload { offset, remaining } => {
                        let Some(src) = buf.get(offset as usize..(offset + remaining) as usize)
                        else {
                            return;
                        };
                        tx.wrote(uart::try_write(src));
                    }
                    SendStep::Delivered | SendStep::Rejected => break,
                }
            }
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
