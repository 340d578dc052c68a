//! Device-side tinyproto client. Once, at start-up, it checks the link
//! with an echo server: messages of 0 B, 1 B, 1 KiB, 64 KiB and 1 MiB, each
//! streamed out and its echo streamed back through 1 KiB socket buffers and
//! compared. Then, every 10 s, it connects, sends a reading, waits for the
//! reply, and closes (flushing, so nothing is lost). Board-neutral: see
//! `board.rs`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

#[cfg(feature = "defmt")]
use defmt_rtt as _;
use embassy_executor::Spawner;
use embassy_net::{IpEndpoint, Ipv4Address};
use embassy_time::{Duration, Timer};
use tinyproto_embassy::embassy_net::tcp::TcpSocket;
use tinyproto_embassy::{Client, Socket, Timeouts};
use tinyproto_embassy_firmware::link_check::link_check;
use tinyproto_embassy_firmware::{board, lan_address, log};

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let core = cortex_m::Peripherals::take().unwrap();
    board::init_time(core.SYST);
    let stack = board::network(spawner, lan_address(20), 0xC11E);
    stack.wait_config_up().await;

    let server = IpEndpoint::new(Ipv4Address::new(192, 168, 1, 10).into(), 7000);
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        greeting: Duration::from_secs(2),
        message: Duration::from_secs(30),
        ..Timeouts::DEFAULT
    };
    let (mut rx, mut tx) = ([0u8; 1024], [0u8; 1024]);
    let mut reply = [0u8; 256];
    let mut reading: u32 = 0;
    let mut checked = false;
    loop {
        // The socket comes back on failure, so the buffers are reused.
        let socket = Socket::new(TcpSocket::new(stack, &mut rx, &mut tx), timeouts);
        match Client::connect_socket(socket, server).await {
            Ok(mut client) if !checked => {
                match link_check(&mut client).await {
                    Ok(()) => log!("link check: passed"),
                    Err(e) => log!("link check: FAILED: {:?}", e),
                }
                checked = true;
                let _ = client.close().await;
            }
            Ok(mut client) => {
                let msg = reading.to_be_bytes();
                match client.transmit(&msg).await {
                    Ok(()) => match client.receive(&mut reply).await {
                        Ok(r) => log!("reply of {} bytes", r.len()),
                        Err(e) => log!("receive failed: {:?}", e),
                    },
                    Err(e) => log!("transmit failed: {:?}", e),
                }
                let _ = client.close().await;
                reading = reading.wrapping_add(1);
            }
            Err((e, _socket)) => {
                log!("connect failed: {:?}", e);
            }
        }
        Timer::after(Duration::from_secs(if checked { 10 } else { 1 })).await;
    }
}
