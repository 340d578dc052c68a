//! Baseline for the size report: the same board, stack and buffers as
//! `echo_server`, echoing raw TCP bytes without tinyproto. The difference in
//! flash and RAM between the two is what tinyproto(-embassy) costs.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

#[cfg(feature = "defmt")]
use defmt_rtt as _;
use embassy_executor::Spawner;
use embassy_futures::join::join;
use embassy_net::tcp::TcpSocket;
use tinyproto_embassy_firmware::{board, lan_address};

async fn echo(stack: embassy_net::Stack<'_>, rx: &mut [u8], tx: &mut [u8], buf: &mut [u8]) -> ! {
    loop {
        let mut socket = TcpSocket::new(stack, &mut *rx, &mut *tx);
        if socket.accept(7000).await.is_err() {
            continue;
        }
        while let Ok(n) = socket.read(buf).await {
            if n == 0 || socket.write(&buf[..n]).await.is_err() {
                break;
            }
        }
        socket.close();
        let _ = socket.flush().await;
    }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let core = cortex_m::Peripherals::take().unwrap();
    board::init_time(core.SYST);
    let stack = board::network(spawner, lan_address(10), 0x5EED);
    stack.wait_config_up().await;
    let (mut rx0, mut tx0, mut b0) = ([0u8; 2048], [0u8; 2048], [0u8; 1024]);
    let (mut rx1, mut tx1, mut b1) = ([0u8; 2048], [0u8; 2048], [0u8; 1024]);
    join(
        echo(stack, &mut rx0, &mut tx0, &mut b0),
        echo(stack, &mut rx1, &mut tx1, &mut b1),
    )
    .await;
}
