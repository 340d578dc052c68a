//! The board: network driver, clocks and addresses. **This module is the only
//! part of the examples that depends on the hardware**; everything else
//! (embassy-net, tinyproto-embassy, the application) is board-neutral.
//!
//! Here the network device is an `embassy-net-driver-channel` device whose
//! other end, [`mac_task`], stands in for a MAC driver. On a real board,
//! replace [`network`]'s first lines with the HAL's driver; the rest stays:
//!
//! - **STM32 with Ethernet (embassy-stm32)**:
//!   ```ignore
//!   static PACKETS: StaticCell<PacketQueue<4, 4>> = StaticCell::new();
//!   let device = Ethernet::new(PACKETS.init(PacketQueue::new()), p.ETH, Irqs,
//!       p.PA1, p.PA2, p.PC1, p.PA7, p.PC4, p.PC5, p.PG13, p.PB13, p.PG11,
//!       GenericPhy::new_auto(), mac_addr);
//!   let (stack, runner) = embassy_net::new(device, config, RESOURCES.init(..), seed);
//!   ```
//! - **Raspberry Pi Pico W (cyw43 Wi-Fi)**:
//!   ```ignore
//!   let (device, mut control, runner) = cyw43::new(state, pwr, spi, fw).await;
//!   spawner.spawn(cyw43_task(runner).unwrap());
//!   control.join("ssid", JoinOptions::new(b"password")).await;
//!   let (stack, runner) = embassy_net::new(device, config, RESOURCES.init(..), seed);
//!   ```
//!
//! Either way the result is an `embassy_net::Stack<'static>`, which is all
//! the application needs.

use cortex_m::peripheral::SYST;
use embassy_executor::Spawner;
use embassy_net::driver::HardwareAddress;
use embassy_net::{Config, Stack, StackResources};
use embassy_net_driver_channel as ch;
use static_cell::StaticCell;

/// Core clock after reset (STM32F4 HSI: 16 MHz). Use your clock tree's.
pub const CORE_HZ: u32 = 16_000_000;
/// Ethernet frame size without FCS.
pub const MTU: usize = 1514;
/// This board's MAC address (locally administered).
pub const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

type Device = ch::Device<'static, MTU>;

/// Starts the time driver. With an embassy HAL, its `init` does this.
pub fn init_time(syst: SYST) {
    systick_time_driver::init(syst, CORE_HZ);
}

/// Stand-in for the MAC driver: takes frames the stack transmits (a real
/// driver hands them to DMA) and would push received frames with
/// `rx_buf()` / `rx_done()`. This one has no wire, so nothing arrives.
#[embassy_executor::task]
async fn mac_task(runner: ch::Runner<'static, MTU>) -> ! {
    let (state, _rx, mut tx) = runner.split();
    state.set_link_state(ch::driver::LinkState::Up);
    loop {
        let _frame = tx.tx_buf().await;
        tx.tx_done();
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device>) -> ! {
    runner.run().await
}

/// Brings the network up and returns the stack; spawns the driver and the
/// stack runner as tasks of their own (embassy-net wakes its runner on every
/// socket call, so it must not share a task with sockets).
pub fn network(spawner: Spawner, config: Config, seed: u64) -> Stack<'static> {
    static STATE: StaticCell<ch::State<MTU, 4, 4>> = StaticCell::new();
    // Sockets: up to 2 server slots + 1 reserve + 1 client here.
    static RESOURCES: StaticCell<StackResources<4>> = StaticCell::new();
    let (mac_runner, device) =
        ch::new(STATE.init(ch::State::new()), HardwareAddress::Ethernet(MAC));
    let (stack, runner) =
        embassy_net::new(device, config, RESOURCES.init(StackResources::new()), seed);
    spawner.spawn(mac_task(mac_runner).unwrap());
    spawner.spawn(net_task(runner).unwrap());
    stack
}
