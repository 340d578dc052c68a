//! Deterministic simulation: a tinyproto-embassy client on stack A and a
//! one-slot server (1 KiB message buffer, a reserve that answers 0xFE) on
//! stack B, over a link that drops, duplicates, reorders, corrupts and
//! delays frames, in virtual time. Each seed plans 50 messages (0 B to
//! 64 KiB, whole or chunked each way) and its own fault rates (up to 10 %
//! each; every fourth seed has all five at 10 %).
//!
//! A seed passes if every message arrives exactly once, in order and whole
//! at both ends, or if the run ends with a typed error and nothing partial
//! was delivered. Anything else (wrong bytes, a message out of order or
//! twice, an untyped end, a hang, a panic) is a failure and prints its seed.
//!
//! `TINYPROTO_SIM_SEED=S` replays seed S alone; `TINYPROTO_SIM_SEEDS=N`
//! runs seeds 0..N (default 1000); `TINYPROTO_SIM_FAULT_PPM` sets the
//! highest fault rate; `TINYPROTO_SIM_VERBOSE=1` prints each seed's link
//! counts and how it ended, `TINYPROTO_TRACE_LINK=1` every segment.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use common::{pattern, run_pair_idle, server_endpoint, Faults, LinkStats, Rng};
use embassy_futures::select::{select, Either};
use embassy_time::{Duration, Instant, Timer};
use tinyproto_embassy::{
    serve, Client, ConnInfo, Ended, Error, Flow, Handler, ReserveStorage, ServerConfig, Session,
    SlotStorage, Take, Timeouts,
};

const PORT: u16 = 7000;
const MESSAGES: usize = 50;
const MAX_LEN: usize = 64 * 1024;
/// The server slot's message buffer: larger messages arrive in chunks.
const SERVER_MESSAGE_BUFFER: usize = 1024;
/// The highest rate of each fault, in parts per million (10 %), unless
/// `TINYPROTO_SIM_FAULT_PPM` says otherwise.
const MAX_FAULT_PPM: u32 = 100_000;

fn max_fault_ppm() -> u32 {
    env_u64("TINYPROTO_SIM_FAULT_PPM").map_or(MAX_FAULT_PPM, |ppm| ppm.min(1_000_000) as u32)
}

/// One message of a seed's plan: its bytes are `pattern(len, fill)`.
#[derive(Debug, Clone, Copy)]
struct Planned {
    len: usize,
    fill: u8,
    /// The client sends it in chunks (`begin_transmit`).
    chunked_up: bool,
    /// The server answers in chunks and the client reads it in chunks.
    chunked_down: bool,
}

impl Planned {
    fn bytes(&self) -> Vec<u8> {
        pattern(self.len, self.fill)
    }
}

/// What one seed does.
struct Scenario {
    faults: Faults,
    plan: Vec<Planned>,
    /// A second client tries to connect while the slot is busy: it must be
    /// told 0xFE (or fail with a typed error), never be served.
    over_limit: bool,
}

impl Scenario {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let max = max_fault_ppm();
        let mut rate = || {
            if seed.is_multiple_of(4) {
                max
            } else {
                (rng.next() % u64::from(max + 1)) as u32
            }
        };
        let faults = Faults {
            drop_ppm: rate(),
            corrupt_ppm: rate(),
            duplicate_ppm: rate(),
            reorder_ppm: rate(),
            delay_ppm: rate(),
            seed,
        };
        let plan = (0..MESSAGES)
            .map(|i| {
                // Sizes spread over every power of two up to 64 KiB, with
                // the edges (0 and 64 KiB) in every plan.
                let len = match i {
                    0 => 0,
                    1 => MAX_LEN,
                    _ => {
                        let bits = rng.next() % 17;
                        (rng.next() % (1 << bits)) as usize
                    }
                };
                Planned {
                    len,
                    fill: rng.next() as u8,
                    chunked_up: rng.next().is_multiple_of(2),
                    chunked_down: rng.next().is_multiple_of(2),
                }
            })
            .collect();
        Self {
            faults,
            plan,
            over_limit: seed.is_multiple_of(5),
        }
    }
}

/// The server's side: checks each message against the plan, in order, and
/// answers it with the same bytes.
struct Checker<'p> {
    plan: &'p [Planned],
    /// The next message expected.
    next: Cell<usize>,
    /// Bytes of the current chunked message so far.
    offset: Cell<usize>,
    violations: RefCell<Vec<String>>,
    ended: RefCell<Vec<Ended>>,
}

impl<'p> Checker<'p> {
    fn new(plan: &'p [Planned]) -> Self {
        Self {
            plan,
            next: Cell::new(0),
            offset: Cell::new(0),
            violations: RefCell::new(Vec::new()),
            ended: RefCell::new(Vec::new()),
        }
    }

    fn violation(&self, what: String) -> Flow {
        self.violations.borrow_mut().push(what);
        Flow::Close
    }

    fn expected(&self) -> Option<Planned> {
        self.plan.get(self.next.get()).copied()
    }

    /// Answers the message just checked, and moves on to the next.
    async fn answer(&self, session: &mut Session<'_, '_>, planned: Planned) -> Flow {
        self.next.set(self.next.get() + 1);
        let data = planned.bytes();
        let sent = if planned.chunked_down {
            send_in_chunks(session, &data, 1000).await
        } else {
            session.transmit(&data).await
        };
        Flow::after(sent)
    }
}

async fn send_in_chunks(
    session: &mut Session<'_, '_>,
    data: &[u8],
    chunk: usize,
) -> Result<(), Error> {
    let mut out = session.begin_transmit(data.len() as u32).await?;
    for part in data.chunks(chunk) {
        out.write_all(part).await?;
    }
    out.finish().await
}

impl Handler for &Checker<'_> {
    async fn message_announced(&mut self, _info: &ConnInfo, len: u32, capacity: u32) -> Take {
        self.offset.set(0);
        if len <= capacity {
            Take::Whole
        } else {
            Take::Chunks
        }
    }

    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        let Some(planned) = self.expected() else {
            return self.violation(format!(
                "server: message {} beyond the plan",
                self.next.get()
            ));
        };
        if msg != planned.bytes() {
            return self.violation(format!(
                "server: message {} differs ({} bytes, planned {})",
                self.next.get(),
                msg.len(),
                planned.len
            ));
        }
        self.answer(session, planned).await
    }

    async fn transmission_chunk(&mut self, _info: &ConnInfo, chunk: &[u8]) -> Flow {
        let Some(planned) = self.expected() else {
            return self.violation(format!(
                "server: chunk of message {} beyond the plan",
                self.next.get()
            ));
        };
        let at = self.offset.get();
        let data = planned.bytes();
        if at + chunk.len() > data.len() || chunk != &data[at..at + chunk.len()] {
            return self.violation(format!(
                "server: message {} differs at {at}",
                self.next.get()
            ));
        }
        self.offset.set(at + chunk.len());
        Flow::Continue
    }

    async fn transmission_complete(&mut self, session: &mut Session<'_, '_>, len: u32) -> Flow {
        let Some(planned) = self.expected() else {
            return self.violation("server: completion beyond the plan".into());
        };
        if len as usize != planned.len || self.offset.get() != planned.len {
            return self.violation(format!(
                "server: message {} complete at {} of {len} bytes, planned {}",
                self.next.get(),
                self.offset.get(),
                planned.len
            ));
        }
        self.answer(session, planned).await
    }

    async fn conn_shutdown(&mut self, _info: &ConnInfo, ended: &Ended) {
        self.ended.borrow_mut().push(*ended);
    }
}

/// Generous bounds: virtual time is free, and a 10 % lossy link backs
/// TCP's retransmission timer off to seconds.
fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(120),
        greeting: Duration::from_secs(120),
        message: Duration::from_secs(600),
        // A reply that never comes (the peer gave up and its RST was lost)
        // must end the wait, as it would on a device.
        receive: Some(Duration::from_secs(600)),
        idle: Some(Duration::from_secs(3600)),
        close: Duration::from_secs(60),
        tcp: None,
        keep_alive: None,
    }
}

/// How a seed ended.
#[derive(Debug)]
enum Outcome {
    /// All messages arrived, exactly once, in order, whole, both ways.
    Delivered,
    /// The run stopped with this typed error after `done` verified messages.
    TypedError { error: Error, done: usize },
    /// Something the protocol promises not to do.
    Failed(String),
}

/// Why the client's side stopped early.
enum Stop {
    /// A typed error after this many verified messages.
    Typed(Error, usize),
    /// Something the protocol promises not to do.
    Violation(String),
}

/// The client's side: sends the plan and checks every answer.
async fn exchange(client: &mut Client<'_>, plan: &[Planned]) -> Result<(), Stop> {
    let mut whole = vec![0u8; MAX_LEN];
    let mut piece = [0u8; 700];
    for (i, planned) in plan.iter().enumerate() {
        let data = planned.bytes();
        let sent = if planned.chunked_up {
            send_in_chunks(&mut client.session(), &data, 1 + (i * 97) % 3000).await
        } else {
            client.transmit(&data).await
        };
        sent.map_err(|e| Stop::Typed(e, i))?;
        if planned.chunked_down {
            let mut incoming = client
                .begin_receive(MAX_LEN as u32)
                .await
                .map_err(|e| Stop::Typed(e, i))?;
            if incoming.len() as usize != planned.len {
                let what = format!(
                    "client: answer {i} announced {} bytes, planned {}",
                    incoming.len(),
                    planned.len
                );
                return Err(Stop::Violation(what));
            }
            let mut at = 0;
            loop {
                let n = incoming
                    .read(&mut piece)
                    .await
                    .map_err(|e| Stop::Typed(e, i))?;
                if n == 0 {
                    break;
                }
                if at + n > data.len() || piece[..n] != data[at..at + n] {
                    let what = format!("client: answer {i} differs at {at}");
                    return Err(Stop::Violation(what));
                }
                at += n;
            }
            if at != planned.len {
                let what = format!("client: answer {i} ended at {at} of {}", planned.len);
                return Err(Stop::Violation(what));
            }
        } else {
            let got = client
                .receive(&mut whole)
                .await
                .map_err(|e| Stop::Typed(e, i))?;
            if got != &data[..] {
                let what = format!(
                    "client: answer {i} differs ({} bytes, planned {})",
                    got.len(),
                    planned.len
                );
                return Err(Stop::Violation(what));
            }
        }
    }
    Ok(())
}

/// Second clients told 0xFE, over all seeds.
static LIMIT_ANSWERS: AtomicU64 = AtomicU64::new(0);

/// A second client while the only slot is busy: the reserve answers 0xFE.
async fn over_the_limit(a: embassy_net::Stack<'_>) -> Result<(), String> {
    let (mut rx, mut tx) = ([0u8; 256], [0u8; 256]);
    // Err(ConnectionLimit) is the answer; another typed error (the faulty
    // link in the way) is allowed; being served is not.
    let answer = match Client::connect(a, &mut rx, &mut tx, server_endpoint(PORT), timeouts()).await
    {
        Ok(_) => Err("a second client was served beyond the connection limit".into()),
        Err(Error::ConnectionLimit) => {
            LIMIT_ANSWERS.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(_) => Ok(()),
    };
    answer
}

/// What the link did to one seed's frames: dropped, corrupted, duplicated,
/// reordered, delayed.
type FaultCounts = [u64; 5];

fn run_seed(seed: u64) -> (Outcome, FaultCounts) {
    let scenario = Scenario::new(seed);
    let checker = Checker::new(&scenario.plan);
    let mut config = ServerConfig::new(PORT);
    config.timeouts = timeouts();
    embassy_sim::reset();
    let mut counts = FaultCounts::default();
    let result = run_pair_idle(
        &mut embassy_sim::advance,
        scenario.faults,
        // Past every bound the operations have (each message 600 s each
        // way), so reaching it means a hang, not a slow link.
        Duration::from_secs(24 * 3600),
        async |a, b, link: &LinkStats| {
            let mut storage = SlotStorage::<8192, 8192, SERVER_MESSAGE_BUFFER>::new();
            let mut reserve_storage = ReserveStorage::new();
            let server = serve(
                b,
                &config,
                [storage.slot()],
                [reserve_storage.reserve()],
                [&checker],
            );
            let client = async {
                let (mut crx, mut ctx) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
                let mut client =
                    match Client::connect(a, &mut crx, &mut ctx, server_endpoint(PORT), timeouts())
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => return Err(Stop::Typed(e, 0)),
                    };
                if scenario.over_limit {
                    // One round trip first, so the slot is surely taken.
                    exchange(&mut client, &scenario.plan[..1]).await?;
                    if let Err(what) = over_the_limit(a).await {
                        return Err(Stop::Violation(what));
                    }
                    exchange_from(&mut client, &scenario.plan, 1).await?;
                } else {
                    exchange(&mut client, &scenario.plan).await?;
                }
                client.close().await.map_err(|e| Stop::Typed(e, MESSAGES))?;
                // Let the server see the end (bounded, in virtual time).
                let until = Instant::now() + Duration::from_secs(60);
                while checker.ended.borrow().is_empty() && Instant::now() < until {
                    Timer::after(Duration::from_millis(50)).await;
                }
                Ok(())
            };
            let result = match select(server, client).await {
                Either::First(never) => match never {},
                Either::Second(r) => r,
            };
            counts = [
                link.dropped.get(),
                link.corrupted.get(),
                link.duplicated.get(),
                link.reordered.get(),
                link.delayed.get(),
            ];
            if verbose() {
                println!(
                    "seed {seed}: {} frames ({} dropped, {} corrupted, {} duplicated, {} reordered, {} delayed), {} ms virtual",
                    link.frames.get(),
                    link.dropped.get(),
                    link.corrupted.get(),
                    link.duplicated.get(),
                    link.reordered.get(),
                    link.delayed.get(),
                    Instant::now().as_millis()
                );
            }
            result
        },
    );
    (verdict(&checker, result), counts)
}

/// How a seed ended, from the server's checks and the client's result.
fn verdict(checker: &Checker<'_>, result: Result<(), Stop>) -> Outcome {
    if let Some(v) = checker.violations.borrow().first() {
        return Outcome::Failed(v.clone());
    }
    match result {
        Ok(()) => {
            if checker.next.get() != MESSAGES {
                return Outcome::Failed(format!(
                    "server saw {} of {MESSAGES} messages",
                    checker.next.get()
                ));
            }
            Outcome::Delivered
        }
        Err(Stop::Violation(what)) => Outcome::Failed(what),
        // The server may be one ahead (it took the message whose answer was
        // lost), never more.
        Err(Stop::Typed(_, done)) if checker.next.get() > done + 1 => Outcome::Failed(format!(
            "server took {} messages, the client finished {done}",
            checker.next.get()
        )),
        Err(Stop::Typed(error, done)) => Outcome::TypedError { error, done },
    }
}

/// [`exchange`] from message `from` on (the indices stay the plan's).
async fn exchange_from(client: &mut Client<'_>, plan: &[Planned], from: usize) -> Result<(), Stop> {
    exchange(client, &plan[from..])
        .await
        .map_err(|stop| match stop {
            Stop::Typed(e, done) => Stop::Typed(e, done + from),
            violation => violation,
        })
}

/// `TINYPROTO_SIM_VERBOSE=1`: a line per seed besides the summary.
fn verbose() -> bool {
    std::env::var_os("TINYPROTO_SIM_VERBOSE").is_some()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

fn main() {
    let seeds: Vec<u64> = match env_u64("TINYPROTO_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("TINYPROTO_SIM_SEEDS").unwrap_or(1000)).collect(),
    };
    let started = std::time::Instant::now();
    let next = AtomicU64::new(0);
    let results = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else { break };
                let outcome =
                    catch_unwind(AssertUnwindSafe(|| run_seed(seed))).unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        (
                            Outcome::Failed(format!("panicked: {what}")),
                            FaultCounts::default(),
                        )
                    });
                results.lock().unwrap().push((seed, outcome));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(seed, _)| *seed);
    let (mut messages, mut failures, mut typed) = (0usize, 0usize, 0usize);
    let mut faults = FaultCounts::default();
    for (seed, (outcome, counts)) in &results {
        for (total, n) in faults.iter_mut().zip(counts) {
            *total += n;
        }
        match outcome {
            Outcome::Delivered => messages += MESSAGES,
            Outcome::TypedError { error, done } => {
                typed += 1;
                messages += done;
                if verbose() {
                    println!(
                        "seed {seed}: ended with a typed error after {done} messages: {error:?}"
                    );
                }
            }
            Outcome::Failed(what) => {
                failures += 1;
                println!("FAILED seed {seed}: {what} (replay: TINYPROTO_SIM_SEED={seed})");
            }
        }
    }
    // A link that injected nothing proves nothing.
    if max_fault_ppm() > 0 && results.len() >= 100 && faults.contains(&0) {
        failures += 1;
        println!("FAILED: the link never injected one of its faults: {faults:?}");
    }
    let limit_answers = LIMIT_ANSWERS.load(Ordering::Relaxed);
    if results.len() >= 100 && limit_answers == 0 {
        failures += 1;
        println!("FAILED: no second client was ever told 0xFE");
    }
    let [dropped, corrupted, duplicated, reordered, delayed] = faults;
    println!(
        "simulation: {} seeds, {messages} messages, {failures} failures ({typed} ended with a typed error; {limit_answers} told 0xFE; frames dropped {dropped}, corrupted {corrupted}, duplicated {duplicated}, reordered {reordered}, delayed {delayed}; {:.1} s wall)",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        std::process::exit(1);
    }
}
