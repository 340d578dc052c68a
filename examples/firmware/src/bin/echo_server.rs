//! Device-side tinyproto echo server: 2 concurrent connections on port 7000,
//! a reserve socket that answers a third peer with 0xFE, 1 KiB messages,
//! an idle timeout and TCP keep-alive. Board-neutral: see `board.rs`.
#![no_std]
#![no_main]

#[cfg(feature = "defmt")]
use defmt_rtt as _;
use embassy_executor::Spawner;
use embassy_time::Duration;
use panic_halt as _;
use tinyproto_embassy::{
    serve, ConnInfo, Ended, Flow, Handler, ReserveStorage, ServerConfig, Session, SlotStorage,
};
use tinyproto_embassy_firmware::{board, log};

struct Echo;

impl Handler for Echo {
    async fn conn_init(&mut self, info: &ConnInfo) -> Flow {
        log!("slot {}: peer {:?}", info.slot, info.remote);
        Flow::Continue
    }

    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        match session.transmit(msg).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn conn_shutdown(&mut self, info: &ConnInfo, ended: &Ended) {
        log!("slot {}: ended {:?}", info.slot, ended);
    }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let core = cortex_m::Peripherals::take().unwrap();
    board::init_time(core.SYST);
    let stack = board::network(spawner, board::lan_address(10), 0x5EED);
    stack.wait_config_up().await;

    let mut config = ServerConfig::new(7000);
    config.timeouts.idle = Some(Duration::from_secs(120));
    config.timeouts.keep_alive = Some(Duration::from_secs(30));
    config.timeouts.tcp = Some(Duration::from_secs(90));
    // The buffers live in this task's (static) future: no heap, no 'static.
    let mut slot0 = SlotStorage::<2048, 2048, 1024>::new();
    let mut slot1 = SlotStorage::<2048, 2048, 1024>::new();
    let mut reserve = ReserveStorage::new();
    log!("serving tinyproto on :7000");
    match serve(
        stack,
        &config,
        [slot0.slot(), slot1.slot()],
        [reserve.reserve()],
        [Echo, Echo],
    )
    .await {}
}
