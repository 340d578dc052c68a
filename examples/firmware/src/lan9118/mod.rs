//! An `embassy-net-driver` for the SMSC LAN9118 Ethernet controller as
//! wired on Arm's MPS2 boards (AN385/AN386/AN500) and emulated by QEMU's
//! `mps2-an385`/`mps2-an386` machines: reset and identification, the MAC
//! address, transmit and receive through the chip's FIFOs (PIO, no DMA),
//! link state from the PHY, and wake-ups from the chip's interrupt.
//!
//! Interrupts, not polling: the driver enables the one event it waits for
//! (a received frame, room in the TX FIFO, a PHY link change), the
//! interrupt handler ([`mmio`]) masks it and wakes the stack's runner, and
//! the next call reads and clears it. Between frames the CPU sleeps.
//!
//! All register access is in [`mmio`], the only module with `unsafe`.

mod mmio;

use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use mmio::{read, write, Reg, WAKER};

/// Largest Ethernet frame handed to or taken from the stack (no FCS).
pub const MTU: usize = 1514;
/// A frame buffer: an MTU frame plus the 4-byte FCS the chip leaves at the
/// end of a received frame, rounded up to whole FIFO words.
const FRAME_BUF: usize = 1520;

/// `BYTE_TEST` always reads this: the bus works and byte order is right.
const BYTE_TEST_PATTERN: u32 = 0x8765_4321;
/// `ID_REV`'s upper half on the chips of the family that share this
/// register set: LAN9115..LAN9118 (QEMU models the LAN9118), their "A"
/// revisions, and the LAN9210/9211/9220/9221 (the MPS2 board carries a
/// LAN9220).
fn is_lan911x(id: u32) -> bool {
    matches!(
        id,
        0x0115..=0x0118 | 0x115A | 0x116A | 0x117A | 0x118A | 0x9210 | 0x9211 | 0x9220 | 0x9221
    )
}

const HW_CFG_SRST: u32 = 1 << 0;
/// `HW_CFG` bit 20 "must be one"; bits 19:16 the TX FIFO size in KiB
/// (5, the reset value: 5 KiB for TX, the other ~11 KiB for RX).
const HW_CFG_MBO_TX_FIFO_5K: u32 = (1 << 20) | (5 << 16);
const PMT_CTRL_READY: u32 = 1 << 0;
/// `IRQ_CFG`: interrupt output enabled.
const IRQ_CFG_EN: u32 = 1 << 8;
/// `IRQ_CFG`: active high (else low), push-pull (else open drain).
const IRQ_CFG_HIGH_PUSH_PULL: u32 = (1 << 4) | (1 << 0);
/// `INT_STS`/`INT_EN`: RX status FIFO above its level (a frame arrived).
const INT_RSFL: u32 = 1 << 3;
/// `INT_STS`/`INT_EN`: TX data FIFO has more free space than its level.
const INT_TDFA: u32 = 1 << 9;
/// `INT_STS`/`INT_EN`: the PHY raised one of its enabled events.
const INT_PHY: u32 = 1 << 18;
/// `FIFO_INT`: TDFA when more than 24 × 64 B are free (room for a frame and
/// its command words); RSFL as soon as one status is waiting (level 0).
const FIFO_INT_LEVELS: u32 = 24 << 24;
/// `TX_CFG`: transmitter on; TX statuses may overrun (we never read them:
/// a full TX status FIFO would otherwise stop the transmitter).
const TX_CFG_ON_STATUS_OVERRUN: u32 = (1 << 1) | (1 << 2);
/// RX status word: the frame's length including FCS, and its error summary.
const RX_STATUS_LEN_SHIFT: u32 = 16;
const RX_STATUS_LEN_MASK: u32 = 0x3FFF;
const RX_STATUS_ERROR: u32 = 1 << 15;
/// TX command A: first and last segment (one buffer per frame).
const TX_CMD_A_FIRST_LAST: u32 = (1 << 13) | (1 << 12);

/// Indirect MAC register access (`MAC_CSR_CMD`): busy, read.
const MAC_CSR_BUSY: u32 = 1 << 31;
const MAC_CSR_READ: u32 = 1 << 30;
/// MAC registers (indices for `MAC_CSR_CMD`).
const MAC_CR: u32 = 1;
const MAC_ADDRH: u32 = 2;
const MAC_ADDRL: u32 = 3;
const MAC_MII_ACC: u32 = 6;
const MAC_MII_DATA: u32 = 7;
/// `MAC_CR`: receiver and transmitter on.
const MAC_CR_RX_TX: u32 = (1 << 2) | (1 << 3);
/// `MAC_CR`: full duplex (set to what auto-negotiation agreed).
const MAC_CR_FDPX: u32 = 1 << 20;
/// `MII_ACC`: the internal PHY is at address 1; busy bit; write bit.
const MII_PHY_ADDR: u32 = 1 << 11;
const MII_BUSY: u32 = 1 << 0;
const MII_WRITE: u32 = 1 << 1;
/// PHY registers: basic status (bit 2: link up, latched low until read),
/// our and the partner's auto-negotiation abilities, interrupt source and
/// mask.
const PHY_BMSR: u32 = 1;
const PHY_BMSR_LINK: u32 = 1 << 2;
const PHY_ANAR: u32 = 4;
const PHY_ANLPAR: u32 = 5;
/// Ability bits of `PHY_ANAR`/`PHY_ANLPAR`: 100BASE-TX full and half
/// duplex, 10BASE-T full duplex.
const PHY_AN_100_FULL: u32 = 1 << 8;
const PHY_AN_100_HALF: u32 = 1 << 7;
const PHY_AN_10_FULL: u32 = 1 << 6;
const PHY_INT_SOURCE: u32 = 29;
const PHY_INT_MASK: u32 = 30;
/// PHY interrupt events: link down, auto-negotiation complete (link up).
const PHY_INT_LINK_DOWN_UP: u32 = (1 << 4) | (1 << 6);

/// Bounds every busy-wait on the chip, so a dead chip is an error, not a hang.
const SPIN_LIMIT: u32 = 100_000;

/// How the board wires the chip's interrupt output to the NVIC, which
/// expects a high level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqPin {
    /// Driven high while an interrupt is pending: QEMU's model, which
    /// inverts the line for any other setting.
    ActiveHighPushPull,
    /// The chip's reset setting, for boards that invert the line on the way
    /// to the NVIC (Arm's MPS2 FPGA, per Arm's mbed-os driver; not tried
    /// here: no hardware).
    ActiveLowOpenDrain,
}

/// Why [`Lan9118::new`] found no working chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// `BYTE_TEST` read something else: nothing (or a wrong bus) there.
    NotFound {
        /// What `BYTE_TEST` read.
        byte_test: u32,
    },
    /// The chip answered but is not of the LAN9118 family.
    UnknownChip {
        /// What `ID_REV` read.
        id_rev: u32,
    },
    /// The soft reset, the chip's READY bit, or a MAC/PHY register access
    /// did not complete in time.
    Timeout,
}

/// The LAN9118 as an `embassy_net_driver::Driver`: give it to
/// `embassy_net::new` as any other device.
pub struct Lan9118 {
    mac: [u8; 6],
    link: LinkState,
    rx: [u8; FRAME_BUF],
    tx: [u8; FRAME_BUF],
}

impl Lan9118 {
    /// Resets and starts the chip. Its MAC address is the one the chip
    /// loaded at reset (from its EEPROM; QEMU's `-nic ...,mac=`), or
    /// `fallback_mac` when it has none; `irq` is how the board wires the
    /// interrupt.
    pub fn new(fallback_mac: [u8; 6], irq: IrqPin) -> Result<Self, InitError> {
        // Only BYTE_TEST may be read before the chip says it is ready.
        let byte_test = read(Reg::ByteTest);
        if byte_test != BYTE_TEST_PATTERN {
            return Err(InitError::NotFound { byte_test });
        }
        spin_until(|| read(Reg::PmtCtrl) & PMT_CTRL_READY != 0)?;
        let id_rev = read(Reg::IdRev);
        if !is_lan911x(id_rev >> 16) {
            return Err(InitError::UnknownChip { id_rev });
        }
        write(Reg::HwCfg, HW_CFG_SRST);
        spin_until(|| read(Reg::HwCfg) & HW_CFG_SRST == 0)?;
        spin_until(|| read(Reg::PmtCtrl) & PMT_CTRL_READY != 0)?;
        write(Reg::HwCfg, HW_CFG_MBO_TX_FIFO_5K);

        let mac = match mac_address()? {
            [0, 0, 0, 0, 0, 0] | [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] => {
                set_mac_address(fallback_mac)?;
                fallback_mac
            }
            loaded => loaded,
        };

        phy_write(PHY_INT_MASK, PHY_INT_LINK_DOWN_UP)?;
        write(Reg::FifoInt, FIFO_INT_LEVELS);
        write(Reg::RxCfg, 0);
        write(Reg::TxCfg, TX_CFG_ON_STATUS_OVERRUN);
        // Half duplex until the link comes up and says otherwise.
        mac_write(MAC_CR, MAC_CR_RX_TX)?;

        write(Reg::IntSts, u32::MAX);
        write(Reg::IntEn, 0);
        let polarity = match irq {
            IrqPin::ActiveHighPushPull => IRQ_CFG_HIGH_PUSH_PULL,
            IrqPin::ActiveLowOpenDrain => 0,
        };
        write(Reg::IrqCfg, IRQ_CFG_EN | polarity);
        mmio::unmask_irq();
        Ok(Self {
            mac,
            link: LinkState::Down,
            rx: [0; FRAME_BUF],
            tx: [0; FRAME_BUF],
        })
    }

    /// The MAC address in use.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Waits for `event` (an `INT_*` bit): registers the waker, clears the
    /// event, checks `ready` once more (it may have happened before the
    /// clear), and only then enables its interrupt. Returns `ready()`.
    fn ready_or_wait(cx: &Context, event: u32, ready: impl Fn() -> bool) -> bool {
        if ready() {
            return true;
        }
        WAKER.register(cx.waker());
        write(Reg::IntSts, event);
        if ready() {
            return true;
        }
        critical_section::with(|_| write(Reg::IntEn, read(Reg::IntEn) | event));
        false
    }
}

/// A received frame is waiting in the RX FIFO.
fn frame_waiting() -> bool {
    settle();
    (read(Reg::RxFifoInf) >> 16) & 0xFF != 0
}

/// The TX data FIFO has room for a full frame and its two command words.
fn room_for_frame() -> bool {
    settle();
    (read(Reg::TxFifoInf) & 0xFFFF) as usize >= FRAME_BUF + 8
}

/// The FIFO fill levels trail a FIFO access by up to 135 ns (datasheet,
/// read-after-write timing): one harmless read covers it on a fast core.
fn settle() {
    let _ = read(Reg::ByteTest);
}

fn spin_until(mut done: impl FnMut() -> bool) -> Result<(), InitError> {
    for _ in 0..SPIN_LIMIT {
        if done() {
            return Ok(());
        }
    }
    Err(InitError::Timeout)
}

fn mac_read(index: u32) -> Result<u32, InitError> {
    spin_until(|| read(Reg::MacCsrCmd) & MAC_CSR_BUSY == 0)?;
    write(Reg::MacCsrCmd, MAC_CSR_BUSY | MAC_CSR_READ | index);
    spin_until(|| read(Reg::MacCsrCmd) & MAC_CSR_BUSY == 0)?;
    Ok(read(Reg::MacCsrData))
}

fn mac_write(index: u32, value: u32) -> Result<(), InitError> {
    spin_until(|| read(Reg::MacCsrCmd) & MAC_CSR_BUSY == 0)?;
    write(Reg::MacCsrData, value);
    write(Reg::MacCsrCmd, MAC_CSR_BUSY | index);
    spin_until(|| read(Reg::MacCsrCmd) & MAC_CSR_BUSY == 0)
}

fn mac_address() -> Result<[u8; 6], InitError> {
    let low = mac_read(MAC_ADDRL)?.to_le_bytes();
    let high = mac_read(MAC_ADDRH)?.to_le_bytes();
    Ok([low[0], low[1], low[2], low[3], high[0], high[1]])
}

fn set_mac_address(mac: [u8; 6]) -> Result<(), InitError> {
    mac_write(
        MAC_ADDRL,
        u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]),
    )?;
    mac_write(MAC_ADDRH, u32::from_le_bytes([mac[4], mac[5], 0, 0]))
}

/// Waits until the MII is idle; a stuck MAC CSR ends the wait at once.
fn mii_idle() -> Result<(), InitError> {
    for _ in 0..SPIN_LIMIT {
        if mac_read(MAC_MII_ACC)? & MII_BUSY == 0 {
            return Ok(());
        }
    }
    Err(InitError::Timeout)
}

fn phy_access(reg: u32, write_bit: u32) -> Result<(), InitError> {
    mii_idle()?;
    mac_write(
        MAC_MII_ACC,
        MII_PHY_ADDR | (reg << 6) | write_bit | MII_BUSY,
    )?;
    mii_idle()
}

fn phy_read(reg: u32) -> Result<u32, InitError> {
    phy_access(reg, 0)?;
    mac_read(MAC_MII_DATA)
}

fn phy_write(reg: u32, value: u32) -> Result<(), InitError> {
    mac_write(MAC_MII_DATA, value)?;
    phy_access(reg, MII_WRITE)
}

/// Whether the link is up; when it is, sets the MAC's duplex to what
/// auto-negotiation agreed (the MAC does not follow the PHY by itself).
fn link_up() -> Result<bool, InitError> {
    // The link bit latches low: the first read reports a drop since the
    // last read, the second the state now.
    let _ = phy_read(PHY_BMSR)?;
    if phy_read(PHY_BMSR)? & PHY_BMSR_LINK == 0 {
        return Ok(false);
    }
    let common = phy_read(PHY_ANAR)? & phy_read(PHY_ANLPAR)?;
    // The best common mode wins: 100 full, 100 half, 10 full, 10 half.
    let full = common & PHY_AN_100_FULL != 0
        || (common & PHY_AN_100_HALF == 0 && common & PHY_AN_10_FULL != 0);
    let cr = mac_read(MAC_CR)? & !MAC_CR_FDPX;
    mac_write(MAC_CR, if full { cr | MAC_CR_FDPX } else { cr })?;
    Ok(true)
}

/// One received frame, read out of the RX FIFO when consumed.
pub struct RxToken<'a> {
    buf: &'a mut [u8; FRAME_BUF],
}

/// Room for one frame; pushed into the TX FIFO when consumed.
pub struct TxToken<'a> {
    buf: &'a mut [u8; FRAME_BUF],
}

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        let len = read_frame(self.buf);
        f(&mut self.buf[..len])
    }
}

/// Pops the next frame into `buf` and returns its length without the FCS;
/// a frame the chip flagged as bad, or too long or short to be Ethernet, is
/// drained from the FIFO and given as empty (the stack ignores it).
fn read_frame(buf: &mut [u8; FRAME_BUF]) -> usize {
    let status = read(Reg::RxStatus);
    let len = ((status >> RX_STATUS_LEN_SHIFT) & RX_STATUS_LEN_MASK) as usize;
    let words = len.div_ceil(4);
    let good = status & RX_STATUS_ERROR == 0 && (14 + 4..=FRAME_BUF).contains(&len);
    for i in 0..words {
        let word = read(Reg::RxData).to_le_bytes();
        if good {
            buf[4 * i..4 * i + 4].copy_from_slice(&word);
        }
    }
    if good {
        len - 4
    } else {
        0
    }
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // The stack never asks for more than the MTU we reported.
        debug_assert!(len <= MTU);
        let len = len.min(MTU);
        let result = f(&mut self.buf[..len]);
        write(Reg::TxData, TX_CMD_A_FIRST_LAST | len as u32);
        write(Reg::TxData, (len as u32) << 16 | len as u32);
        for word in self.buf[..len.div_ceil(4) * 4].chunks_exact(4) {
            write(
                Reg::TxData,
                u32::from_le_bytes([word[0], word[1], word[2], word[3]]),
            );
        }
        result
    }
}

impl embassy_net_driver::Driver for Lan9118 {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, cx: &mut Context) -> Option<(RxToken<'_>, TxToken<'_>)> {
        // The stack may answer a frame at once (ARP, ACK): only take one
        // when a reply fits too.
        if !Self::ready_or_wait(cx, INT_TDFA, room_for_frame)
            || !Self::ready_or_wait(cx, INT_RSFL, frame_waiting)
        {
            return None;
        }
        Some((RxToken { buf: &mut self.rx }, TxToken { buf: &mut self.tx }))
    }

    fn transmit(&mut self, cx: &mut Context) -> Option<TxToken<'_>> {
        Self::ready_or_wait(cx, INT_TDFA, room_for_frame).then_some(TxToken { buf: &mut self.tx })
    }

    fn link_state(&mut self, cx: &mut Context) -> LinkState {
        // Read the PHY only at start and when it raised an event.
        let first = self.link == LinkState::Down && read(Reg::IntEn) & INT_PHY == 0;
        if first || read(Reg::IntSts) & INT_PHY != 0 {
            WAKER.register(cx.waker());
            // Reading the PHY's source register clears its event (and the
            // chip's PHY_INT with it).
            let _ = phy_read(PHY_INT_SOURCE);
            self.link = match link_up() {
                Ok(true) => LinkState::Up,
                _ => LinkState::Down,
            };
            critical_section::with(|_| write(Reg::IntEn, read(Reg::IntEn) | INT_PHY));
        }
        self.link
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
