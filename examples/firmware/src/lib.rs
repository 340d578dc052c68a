//! Shared by the firmware examples: the board glue (the only board-specific
//! part) and its panic handler.
//!
//! Two boards: the board-neutral stand-in (`board.rs`, the default, for
//! size figures) and, with feature `mps2-an386`, Arm's MPS2 AN386 with its
//! LAN9118 Ethernet controller, which QEMU emulates (`board_mps2_an386.rs`,
//! `lan9118/`). The applications in `src/bin` are the same for both.
#![no_std]
#![deny(unsafe_code)]

#[cfg(not(feature = "mps2-an386"))]
pub mod board;
#[cfg(feature = "mps2-an386")]
#[path = "board_mps2_an386.rs"]
pub mod board;
#[cfg(all(feature = "tls", feature = "mps2-an386"))]
pub mod host_entropy;
#[cfg(feature = "mps2-an386")]
pub mod lan9118;

#[path = "../../qemu-test/src/receipt.rs"]
pub mod receipt;

pub mod link_check;

use embassy_net::{Config, Ipv4Address, Ipv4Cidr, StaticConfigV4};

/// Static IPv4 configuration for host `host` of the examples' LAN
/// 192.168.1.0/24 (gateway .1), on every board: the server is .10, the
/// client .20. The QEMU tests put the host's side of the TAP device, or
/// QEMU's user-mode network, on the same subnet. A real board may use
/// `Config::dhcpv4` instead.
pub fn lan_address(host: u8) -> Config {
    Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(Ipv4Address::new(192, 168, 1, host), 24),
        gateway: Some(Ipv4Address::new(192, 168, 1, 1)),
        dns_servers: Default::default(),
    })
}

// The board decides what a panic does: stop (a real board's watchdog
// resets it), or, under QEMU, print it and exit with status 1.
#[cfg(not(feature = "mps2-an386"))]
use panic_halt as _;
#[cfg(feature = "mps2-an386")]
use panic_semihosting as _;

#[doc(hidden)]
#[cfg(feature = "mps2-an386")]
pub use cortex_m_semihosting::hprintln as __semihosting_println;

/// Logs with defmt when the `defmt` feature is on, through semihosting on
/// the emulated board; compiles to nothing otherwise.
#[macro_export]
macro_rules! log {
    ($s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::info!($s $(, $x)*);
        #[cfg(feature = "mps2-an386")]
        $crate::__semihosting_println!($s $(, $x)*);
        #[cfg(not(any(feature = "defmt", feature = "mps2-an386")))]
        let _ = ($( & $x ),*);
    }};
}
