//! Device-side tinyproto client: every 10 s, connects to a server, sends a
//! reading, waits for the reply, and closes (flushing, so nothing is lost).
//! Board-neutral: see `board.rs`.
#![no_std]
#![no_main]

#[cfg(feature = "defmt")]
use defmt_rtt as _;
use embassy_executor::Spawner;
use embassy_net::{IpEndpoint, Ipv4Address};
use embassy_time::{Duration, Timer};
use panic_halt as _;
use tinyproto_embassy::embassy_net::tcp::TcpSocket;
use tinyproto_embassy::{Client, Socket, Timeouts};
use tinyproto_embassy_firmware::{board, log};

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let core = cortex_m::Peripherals::take().unwrap();
    board::init_time(core.SYST);
    let stack = board::network(spawner, board::lan_address(20), 0xC11E);
    stack.wait_config_up().await;

    let server = IpEndpoint::new(Ipv4Address::new(192, 168, 1, 10).into(), 7000);
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        greeting: Duration::from_secs(2),
        message: Duration::from_secs(5),
        ..Timeouts::DEFAULT
    };
    let (mut rx, mut tx) = ([0u8; 1024], [0u8; 1024]);
    let mut reply = [0u8; 256];
    let mut reading: u32 = 0;
    loop {
        // The socket comes back on failure, so the buffers are reused.
        let socket = Socket::new(TcpSocket::new(stack, &mut rx, &mut tx), timeouts);
        match Client::connect_socket(socket, server).await {
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
            }
            Err((e, _socket)) => {
                log!("connect failed: {:?}", e);
            }
        }
        reading = reading.wrapping_add(1);
        Timer::after(Duration::from_secs(10)).await;
    }
}
