//! Register access to the LAN9118 and its interrupt line: **the only unsafe
//! code of the firmware examples**. Everything above it (the driver, the
//! board, the applications) is safe Rust.
//!
//! Safety rests on two facts of the board, checked against QEMU's
//! `hw/arm/mps2.c` and the MPS2 AN385/AN386 application notes: the LAN9118's
//! registers are a 256-byte block at [`BASE`], and its interrupt is NVIC line
//! [`IRQ`]. A register is named by [`Reg`], so no other address can be formed.
#![allow(unsafe_code)]

use cortex_m::interrupt::InterruptNumber;
use cortex_m::peripheral::NVIC;

/// Base address of the LAN9118 on MPS2 AN385/AN386/AN500.
pub const BASE: usize = 0x4020_0000;
/// The LAN9118's NVIC interrupt line on the same boards.
pub const IRQ: u16 = 13;

/// The system control and status registers the driver uses (offsets from
/// [`BASE`], LAN9118 datasheet section 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Reg {
    /// RX data FIFO port (read a frame, a word at a time).
    RxData = 0x00,
    /// TX data FIFO port (write command words A and B, then the frame).
    TxData = 0x20,
    /// RX status FIFO port: one status word per received frame.
    RxStatus = 0x40,
    /// Chip identification and revision.
    IdRev = 0x50,
    /// Interrupt pin configuration.
    IrqCfg = 0x54,
    /// Interrupt status (write 1 to clear).
    IntSts = 0x58,
    /// Interrupt enables.
    IntEn = 0x5C,
    /// Fixed test pattern 0x8765_4321 (bus and byte order check).
    ByteTest = 0x64,
    /// FIFO interrupt thresholds.
    FifoInt = 0x68,
    /// Receive configuration.
    RxCfg = 0x6C,
    /// Transmit configuration.
    TxCfg = 0x70,
    /// Hardware configuration (soft reset, FIFO sizes).
    HwCfg = 0x74,
    /// RX FIFO fill levels.
    RxFifoInf = 0x7C,
    /// TX FIFO fill levels.
    TxFifoInf = 0x80,
    /// Power management control (the READY bit).
    PmtCtrl = 0x84,
    /// Indirect access to the MAC's registers: command.
    MacCsrCmd = 0xA4,
    /// Indirect access to the MAC's registers: data.
    MacCsrData = 0xA8,
}

/// Reads a register.
pub fn read(reg: Reg) -> u32 {
    // SAFETY: `BASE + reg` is a 4-byte-aligned register inside the LAN9118's
    // MMIO block (module docs); a volatile read of it has no effect on Rust
    // memory. The FIFO ports pop an entry on read, which the driver accounts
    // for; that is device state, not memory safety.
    unsafe { core::ptr::read_volatile((BASE + reg as usize) as *const u32) }
}

/// Writes a register.
pub fn write(reg: Reg, value: u32) {
    // SAFETY: as in `read`: an aligned device register outside any Rust
    // object, so the volatile write cannot alias memory the program owns.
    unsafe { core::ptr::write_volatile((BASE + reg as usize) as *mut u32, value) }
}

#[derive(Clone, Copy)]
struct Line;

// SAFETY: the trait asks for an enum of the device's interrupts whose
// `number` is always the same valid line; `Line` is a one-variant stand-in
// for that enum (this board's one device interrupt we use), and `number`
// always returns IRQ.
unsafe impl InterruptNumber for Line {
    fn number(self) -> u16 {
        IRQ
    }
}

/// Enables the LAN9118's interrupt line in the NVIC, dropping what it
/// latched before the chip's `IRQ_CFG` was set (QEMU's line is asserted
/// from reset until then).
pub fn unmask_irq() {
    NVIC::unpend(Line);
    // SAFETY: unmasking can break a critical section based on masking
    // (cortex-m's warning); this firmware's critical sections disable all
    // interrupts instead (`critical-section-single-core`). The handler
    // touches the registers above and wakes a task through an
    // `AtomicWaker`, which only marks it ready in the executor.
    unsafe { NVIC::unmask(Line) }
}

/// Wakes the driver's task from the interrupt handler.
pub static WAKER: embassy_sync::waitqueue::AtomicWaker =
    embassy_sync::waitqueue::AtomicWaker::new();

/// The interrupt: masks every enabled event that fired (the line is level
/// sensitive, so it drops) and wakes the driver, which handles the events
/// and enables again what it waits for. Events are not cleared here: the
/// driver reads and clears them itself.
fn on_irq() {
    let fired = read(Reg::IntSts) & read(Reg::IntEn);
    if fired != 0 {
        write(Reg::IntEn, read(Reg::IntEn) & !fired);
        WAKER.wake();
    }
}

// Without a device crate, cortex-m-rt routes every device interrupt to
// `DefaultHandler`; this board has one device interrupt to serve.
#[cortex_m_rt::exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == IRQ as i16 {
        on_irq();
    } else {
        // A fault or a line nobody enabled: returning would re-enter it.
        panic!("unexpected exception or interrupt {}", irqn);
    }
}
