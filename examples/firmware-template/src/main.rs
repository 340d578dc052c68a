//! The application: a tinyproto server on port 7000 with two connections
//! at a time and a reserve socket that answers a third peer 0xFE. Each
//! message is answered with its echo. Put your protocol in [`App`]'s hooks;
//! the board (clocks, network) is `board.rs`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

mod board;

use embassy_executor::Spawner;
use embassy_time::Duration;
use panic_halt as _;
use tinyproto_embassy::{
    serve, ConnInfo, Flow, Handler, ReserveStorage, ServerConfig, Session, SlotStorage,
};

/// One per connection slot, so the hooks take `&mut self` and
/// per-connection state is a plain field. (For one value shared by every
/// slot: `impl Handler for &App` and `[&app, &app]`.)
#[derive(Default)]
struct App {
    /// Messages on the current connection.
    messages: u32,
}

impl Handler for App {
    async fn conn_init(&mut self, _info: &ConnInfo) -> Flow {
        self.messages = 0;
        Flow::Continue
    }

    /// A whole message (up to the slot's 1 KiB message buffer; longer ones
    /// are answered 0x00 and the connection goes on).
    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        self.messages += 1;
        Flow::after(session.transmit(msg).await)
    }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let stack = board::init(spawner).await;
    stack.wait_config_up().await;

    let mut config = ServerConfig::new(7000);
    config.timeouts.idle = Some(Duration::from_secs(120));
    // TCP receive and send buffers and the message buffer of each slot, in
    // this task's (static) future: no heap, nothing 'static to declare.
    let mut slots = [SlotStorage::<2048, 2048, 1024>::new(), SlotStorage::new()];
    let mut reserve = ReserveStorage::new();
    match serve(
        stack,
        &config,
        slots.each_mut().map(SlotStorage::slot),
        [reserve.reserve()],
        [App::default(), App::default()],
    )
    .await {}
}
