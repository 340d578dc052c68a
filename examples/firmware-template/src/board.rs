//! The board: clocks, time, and the network up to an `embassy_net::Stack`.
//! **The only file that changes from board to board** (README.md says what
//! goes here for embassy-stm32 Ethernet, embassy-rp with a W5500, and
//! cyw43). The application sees nothing but the `Stack`.
//!
//! As it stands, the network device is a stand-in: an
//! `embassy-net-driver-channel` device whose other end ([`mac_task`]) takes
//! every frame the stack sends and receives none. It builds and runs
//! anywhere, and it is exactly what a MAC driver replaces.

use embassy_executor::Spawner;
use embassy_net::driver::HardwareAddress;
use embassy_net::{Config, Ipv4Address, Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use embassy_net_driver_channel as ch;
use static_cell::StaticCell;

/// The core clock SysTick counts (an STM32F4 after reset: 16 MHz HSI).
const CORE_HZ: u32 = 16_000_000;
/// Ethernet frame size without FCS.
const MTU: usize = 1514;
/// This board's MAC address (locally administered: set bit 1 of the first byte).
const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Sockets the stack holds: the server's slots and reserves, plus any
/// client connections of the application.
const SOCKETS: usize = 3;

type Device = ch::Device<'static, MTU>;

/// Starts time and the network; returns the stack once its tasks run.
/// The address is static (192.168.1.10/24); `Config::dhcpv4(Default::default())`
/// asks a DHCP server instead. `async` because real drivers are (cyw43 and
/// the W5500 load and reset their chips).
pub async fn init(spawner: Spawner) -> Stack<'static> {
    // Time: embassy-time's driver. With an embassy HAL, `embassy_xxx::init`
    // starts the HAL's instead: drop these two lines and the crate.
    let core = cortex_m::Peripherals::take().unwrap();
    systick_time_driver::init(core.SYST, CORE_HZ);

    // The network device: replace these lines with your MAC's driver.
    static STATE: StaticCell<ch::State<MTU, 4, 4>> = StaticCell::new();
    let (mac_runner, device) =
        ch::new(STATE.init(ch::State::new()), HardwareAddress::Ethernet(MAC));
    spawner.spawn(mac_task(mac_runner).unwrap());

    let config = Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(Ipv4Address::new(192, 168, 1, 10), 24),
        gateway: Some(Ipv4Address::new(192, 168, 1, 1)),
        dns_servers: Default::default(),
    });
    // Seed smoltcp's TCP sequence numbers from the chip's random number
    // generator; a constant makes them guessable.
    let seed = 0x5EED;
    static RESOURCES: StaticCell<StackResources<SOCKETS>> = StaticCell::new();
    let (stack, runner) =
        embassy_net::new(device, config, RESOURCES.init(StackResources::new()), seed);
    // The stack's runner gets a task of its own: embassy-net wakes it on
    // every socket call, so sharing a task with the sockets would spin.
    spawner.spawn(net_task(runner).unwrap());
    stack
}

/// The stand-in MAC: takes every frame the stack transmits (a driver hands
/// it to DMA) and never receives one (a driver fills `rx_buf` / `rx_done`).
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
