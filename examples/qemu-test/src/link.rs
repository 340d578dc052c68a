//! Two embassy-net stacks joined by an in-memory link: each stack gets an
//! `embassy-net-driver-channel` device, and a task copies every frame one
//! side transmits into the other side's receive queue. On a real board the
//! stack's device is the board's network driver instead.

use embassy_futures::join::join;
use embassy_net_driver_channel as ch;

/// Largest IP packet on the link.
pub const MTU: usize = 1500;

/// Copies frames from one device's transmit side to the other's receive side.
async fn forward(mut from: ch::TxRunner<'_, MTU>, mut to: ch::RxRunner<'_, MTU>) -> ! {
    loop {
        let frame = from.tx_buf().await;
        let len = frame.len();
        let dst = to.rx_buf().await;
        dst[..len].copy_from_slice(frame);
        to.rx_done(len);
        from.tx_done();
    }
}

/// Runs both directions of the link.
pub async fn run(a: ch::Runner<'_, MTU>, b: ch::Runner<'_, MTU>) -> ! {
    let (state_a, rx_a, tx_a) = a.split();
    let (state_b, rx_b, tx_b) = b.split();
    // Channel devices start with the link down.
    state_a.set_link_state(ch::driver::LinkState::Up);
    state_b.set_link_state(ch::driver::LinkState::Up);
    let (never, _) = join(forward(tx_a, rx_b), forward(tx_b, rx_a)).await;
    never
}
