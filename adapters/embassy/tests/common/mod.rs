//! Two embassy-net stacks in one process over an in-memory link, with an
//! optional fault injector, driven by a tiny thread-parking `block_on` (no
//! executor, no `'static`, timers through embassy-time's generic queue).
//! The simulation (`adapters/embassy/sim`) shares this file and swaps the
//! parking for its virtual clock (see [`run_pair_idle`]).
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use embassy_futures::join::join4;
use embassy_net::driver::HardwareAddress;
use embassy_net::{
    Config, IpEndpoint, Ipv4Address, Ipv4Cidr, Stack, StackResources, StaticConfigV4,
};
use embassy_net_driver_channel as ch;
use embassy_time::{Duration, Instant};

pub const MTU: usize = 1500;
pub const ADDR_A: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
pub const ADDR_B: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

/// Where the server of a test listens (on stack B).
pub fn server_endpoint(port: u16) -> IpEndpoint {
    IpEndpoint::new(ADDR_B.into(), port)
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread, parking while it waits.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// Runs `main` to completion and `background` beside it, as two tasks with
/// their own wakers. embassy-net wakes its runner on every socket call, so
/// a socket future polled in the runner's own task would wake itself forever
/// (a busy loop); separate tasks avoid that, as separate embassy tasks do.
pub fn block_on_with<B: Future, F: Future>(background: B, main: F) -> F::Output {
    block_on_idle(background, main, &mut thread::park)
}

/// [`block_on_with`], calling `idle` whenever neither task is woken (there,
/// the thread parks; in virtual time, the clock jumps to the next timer).
pub fn block_on_idle<B: Future, F: Future>(
    background: B,
    main: F,
    idle: &mut dyn FnMut(),
) -> F::Output {
    struct Flag {
        woken: AtomicBool,
        thread: Thread,
    }
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.woken.store(true, Ordering::Release);
            self.thread.unpark();
        }
    }
    let flag = || {
        Arc::new(Flag {
            woken: AtomicBool::new(true),
            thread: thread::current(),
        })
    };
    let (main_flag, bg_flag) = (flag(), flag());
    let main_waker = Waker::from(main_flag.clone());
    let bg_waker = Waker::from(bg_flag.clone());
    let mut main = pin!(main);
    let mut background = pin!(background);
    loop {
        if main_flag.woken.swap(false, Ordering::AcqRel) {
            if let Poll::Ready(out) = main.as_mut().poll(&mut Context::from_waker(&main_waker)) {
                return out;
            }
        }
        if bg_flag.woken.swap(false, Ordering::AcqRel) {
            let _ = background
                .as_mut()
                .poll(&mut Context::from_waker(&bg_waker));
        }
        if !main_flag.woken.load(Ordering::Acquire) && !bg_flag.woken.load(Ordering::Acquire) {
            idle();
        }
    }
}

/// Shares of frames, in parts per million, that the link drops, corrupts
/// (one bit flipped), duplicates, reorders (holds back until after the next
/// frame) or delays (by up to [`MAX_DELAY`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop_ppm: u32,
    pub corrupt_ppm: u32,
    pub duplicate_ppm: u32,
    pub reorder_ppm: u32,
    pub delay_ppm: u32,
    pub seed: u64,
}

/// The longest a delayed frame waits (and the link behind it).
pub const MAX_DELAY: Duration = Duration::from_millis(40);

/// What the link did, for assertions that faults really happened.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub frames: std::cell::Cell<u64>,
    pub dropped: std::cell::Cell<u64>,
    pub corrupted: std::cell::Cell<u64>,
    pub duplicated: std::cell::Cell<u64>,
    pub reordered: std::cell::Cell<u64>,
    pub delayed: std::cell::Cell<u64>,
    /// While set, the link drops every frame (a cable pulled).
    pub cut: std::cell::Cell<bool>,
}

/// A small seeded generator (xorshift64*), for faults and test plans.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && (self.next() % 1_000_000) < u64::from(ppm)
    }
}

/// Copies every frame `from` transmits into `to`'s receive side, with the
/// faults `faults` asks for.
async fn link(
    mut from: ch::TxRunner<'_, MTU>,
    mut to: ch::RxRunner<'_, MTU>,
    faults: Faults,
    stats: &LinkStats,
) -> ! {
    let count = |c: &std::cell::Cell<u64>| c.set(c.get() + 1);
    let mut rng = Rng(faults.seed | 1);
    let trace = std::env::var_os("TINYPROTO_TRACE_LINK").is_some();
    // A frame held back, sent after the next one.
    let mut held: Option<Vec<u8>> = None;
    loop {
        let frame = from.tx_buf().await;
        count(&stats.frames);
        if stats.cut.get() || rng.chance(faults.drop_ppm) {
            count(&stats.dropped);
            from.tx_done();
            continue;
        }
        let mut frame = frame.to_vec();
        from.tx_done();
        if trace {
            trace_frame(&frame);
        }
        if !frame.is_empty() && rng.chance(faults.corrupt_ppm) {
            count(&stats.corrupted);
            let at = (rng.next() % frame.len() as u64) as usize;
            frame[at] ^= 1 << (rng.next() % 8);
        }
        if rng.chance(faults.delay_ppm) {
            count(&stats.delayed);
            let micros = rng.next() % MAX_DELAY.as_micros();
            embassy_time::Timer::after(Duration::from_micros(micros)).await;
        }
        if held.is_none() && rng.chance(faults.reorder_ppm) {
            count(&stats.reordered);
            held = Some(frame);
            continue;
        }
        let copies = if rng.chance(faults.duplicate_ppm) {
            count(&stats.duplicated);
            2
        } else {
            1
        };
        for _ in 0..copies {
            deliver(&mut to, &frame).await;
        }
        if let Some(late) = held.take() {
            deliver(&mut to, &late).await;
        }
    }
}

/// Prints a TCP segment's time, ports, sequence numbers, flags and length
/// to stderr (`TINYPROTO_TRACE_LINK=1`), to follow one seed's run.
fn trace_frame(frame: &[u8]) {
    let ihl = usize::from(frame.first().map_or(0, |b| b & 15)) * 4;
    let Some(tcp) = frame.get(ihl..).filter(|t| t.len() >= 20) else {
        return;
    };
    let be16 = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    let be32 = |at: usize| u32::from_be_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
    let payload = tcp.len().saturating_sub(usize::from(tcp[12] >> 4) * 4);
    eprintln!(
        "{:>9} ms  {}->{}  seq {} ack {} flags {:#04x} len {payload}",
        Instant::now().as_millis(),
        be16(0),
        be16(2),
        be32(4),
        be32(8),
        tcp[13]
    );
}

async fn deliver(to: &mut ch::RxRunner<'_, MTU>, frame: &[u8]) {
    let dst = to.rx_buf().await;
    dst[..frame.len()].copy_from_slice(frame);
    to.rx_done(frame.len());
}

fn config(addr: Ipv4Address) -> Config {
    Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(addr, 24),
        gateway: None,
        dns_servers: Default::default(),
    })
}

/// Builds stacks A (10.0.0.1) and B (10.0.0.2) linked in memory, and runs
/// `test(a, b, stats)` with the stacks and the link driven alongside it.
/// Panics if the test takes longer than `limit`.
pub fn run_pair<R>(
    faults: Faults,
    limit: Duration,
    test: impl for<'a> AsyncFnOnce(Stack<'a>, Stack<'a>, &'a LinkStats) -> R,
) -> R {
    run_pair_idle(&mut thread::park, faults, limit, test)
}

/// [`run_pair`], calling `idle` when nothing is ready (see [`block_on_idle`]).
pub fn run_pair_idle<R>(
    idle: &mut dyn FnMut(),
    faults: Faults,
    limit: Duration,
    test: impl for<'a> AsyncFnOnce(Stack<'a>, Stack<'a>, &'a LinkStats) -> R,
) -> R {
    let mut state_a = ch::State::<MTU, 16, 16>::new();
    let mut state_b = ch::State::<MTU, 16, 16>::new();
    let (runner_a, device_a) = ch::new(&mut state_a, HardwareAddress::Ip);
    let (runner_b, device_b) = ch::new(&mut state_b, HardwareAddress::Ip);
    let mut resources_a = StackResources::<32>::new();
    let mut resources_b = StackResources::<32>::new();
    let (stack_a, mut net_a) = embassy_net::new(device_a, config(ADDR_A), &mut resources_a, 1);
    let (stack_b, mut net_b) = embassy_net::new(device_b, config(ADDR_B), &mut resources_b, 2);
    let (link_state_a, rx_a, tx_a) = runner_a.split();
    let (link_state_b, rx_b, tx_b) = runner_b.split();
    link_state_a.set_link_state(ch::driver::LinkState::Up);
    link_state_b.set_link_state(ch::driver::LinkState::Up);
    let stats = LinkStats::default();
    let reverse = Faults {
        seed: faults.seed.wrapping_add(0x9E37_79B9_7F4A_7C15),
        ..faults
    };
    let background = join4(
        net_a.run(),
        net_b.run(),
        link(tx_a, rx_b, faults, &stats),
        link(tx_b, rx_a, reverse, &stats),
    );
    let started = Instant::now();
    let body = async {
        stack_a.wait_config_up().await;
        stack_b.wait_config_up().await;
        test(stack_a, stack_b, &stats).await
    };
    match block_on_idle(background, embassy_time::with_timeout(limit, body), idle) {
        Ok(r) => r,
        Err(_) => panic!(
            "test did not finish within {} ms (ran {} ms)",
            limit.as_millis(),
            started.elapsed().as_millis()
        ),
    }
}

/// A deterministic test pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8)
        .collect()
}
