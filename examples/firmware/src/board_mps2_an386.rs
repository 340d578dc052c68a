//! The board: Arm MPS2 with FPGA image AN386 (Cortex-M4F, 25 MHz), as QEMU's
//! `mps2-an386` machine emulates it, with its SMSC LAN9118 Ethernet
//! controller. The same interface as the board-neutral `board.rs`
//! (`init_time`, `network`, `MAC`), so the applications are
//! unchanged; this module only swaps the network device for the
//! [`Lan9118`](crate::lan9118::Lan9118) driver and prints the applications'
//! log lines through semihosting (QEMU's `-semihosting`), for want of a
//! debug probe.
//!
//! On a real board with another MAC, the driver line in [`network`] is all
//! that changes (see `board.rs` for embassy-stm32 and cyw43).

use cortex_m::peripheral::SYST;
use embassy_executor::Spawner;
use embassy_net::{Config, Stack, StackResources};
use static_cell::StaticCell;

use crate::lan9118::{IrqPin, Lan9118};

/// The AN386's system clock as QEMU models it (SysTick counts it).
pub const CORE_HZ: u32 = 25_000_000;
/// Used only if the LAN9118 loaded no MAC address at reset (QEMU always
/// gives it one: `-nic ...,mac=`, or 52:54:00:12:34:56 and up).
pub const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// Starts the time driver.
pub fn init_time(syst: SYST) {
    systick_time_driver::init(syst, CORE_HZ);
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Lan9118>) -> ! {
    runner.run().await
}

/// Logs the link going down and up (the driver learns it from the PHY's
/// interrupt).
#[embassy_executor::task]
async fn link_log_task(stack: Stack<'static>) -> ! {
    loop {
        stack.wait_link_up().await;
        crate::log!("link up");
        stack.wait_link_down().await;
        crate::log!("link down");
    }
}

/// Resets the LAN9118, brings the network up and returns the stack; the
/// stack runner gets a task of its own, and so does a log of link changes.
/// Panics if the chip is missing (a board without its network has nothing
/// to do).
pub fn network(spawner: Spawner, config: Config, seed: u64) -> Stack<'static> {
    static RESOURCES: StaticCell<StackResources<4>> = StaticCell::new();
    let device = match Lan9118::new(MAC, IrqPin::ActiveHighPushPull) {
        Ok(device) => device,
        Err(e) => panic!("LAN9118: {:?}", e),
    };
    let mac = device.mac();
    crate::log!(
        "LAN9118 up, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    let (stack, runner) =
        embassy_net::new(device, config, RESOURCES.init(StackResources::new()), seed);
    spawner.spawn(net_task(runner).unwrap());
    spawner.spawn(link_log_task(stack).unwrap());
    stack
}
