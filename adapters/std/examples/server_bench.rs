//! What a desktop user of `tinyproto-std` measures first, beside raw TCP on
//! the same machine in the same run: accepts per second, the first message
//! on a fresh connection, the CPU of a server holding many idle
//! connections, a broadcast reaching every connection, the memory each
//! connection costs; and that every one of the connections still echoes.
//! Then the echo job (64 B request, 64 B reply, tokio clients) at 1, 100
//! and 1,000 connections, against the tinyproto-std server both ways (a
//! thread per connection, `set_conn_handler`; the event threads,
//! `set_event_handler`), a raw tokio echo, a tokio-util
//! `LengthDelimitedCodec` echo, and the core's two drivers with nothing
//! around them: the async one on tokio, and the blocking one on a plain
//! thread per connection (no look before a send, no deadlines, no reactor:
//! what no thread-per-connection server can beat).
//!
//! ```text
//! cargo run --release -p tinyproto-std --example server_bench -- [--connections N] [--idle-secs S] [--echo-only]
//! ```
//!
//! `--echo-against ADDR [--kind raw|codec] [--connections N]` runs the echo
//! job's clients alone against a server already running (started with
//! `--serve tinyproto|tinyproto-events|raw|tokio-raw|tokio-codec|tokio-tinyproto|thread-tinyproto`),
//! for `perf stat -p` or `strace -c -f -p` on the server.
//!
//! The servers run in a child process (this program started again with
//! `--serve tinyproto|raw`), so that their CPU and memory are theirs alone
//! and each process holds one end of every connection (10,000 connections
//! fit a limit of 20,000 open files). Loopback only. The raw TCP server is
//! what one writes without tinyproto: a thread per connection blocked in
//! `read`, echoing what comes; it answers the 0xFF greeting byte so that
//! both sides do the same round trips.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tinyproto_std::{events, on_message, Client, Conn, Server};

/// Connections opened one after another for the accept rate and the
/// broadcast.
const SEQUENTIAL: usize = 1_000;
/// Fresh connections timed for the first message.
const FIRST_MESSAGES: usize = 200;
/// Client threads reading the broadcast, as devices would, each its own.
const READERS: usize = 16;
/// Every read and write of the client side gives up after this.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(kind) = flag(&args, "--serve") {
        return serve(&kind);
    }
    if args.iter().any(|a| a == "--echo-only") {
        return echo_job();
    }
    if let Some(addr) = flag(&args, "--echo-against") {
        // The echo job against a server already running (for `perf stat`
        // or `strace -c -f -p` on it, say): tinyproto clients unless
        // `--kind raw` (tokio-raw's clients) or `--kind codec`; 100
        // connections unless `--connections N`.
        let kind = match flag(&args, "--kind").as_deref() {
            Some("raw") => Kind::TokioRaw,
            Some("codec") => Kind::TokioCodec,
            _ => Kind::Tinyproto,
        };
        let connections = flag(&args, "--connections").map_or(Ok(100), |v| v.parse())?;
        rlimit::increase_nofile_limit(u64::MAX)?;
        let echo = echo_rate(kind, addr.parse()?, connections, None)?;
        println!("{:.0} replies/s", echo.rate);
        return Ok(());
    }
    let connections: usize = flag(&args, "--connections").map_or(Ok(10_000), |v| v.parse())?;
    let idle_secs: u64 = flag(&args, "--idle-secs").map_or(Ok(10), |v| v.parse())?;
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    let mut connections = connections.max(SEQUENTIAL + 1);
    let fits = usize::try_from(limit.saturating_sub(64)).unwrap_or(usize::MAX);
    if connections > fits {
        println!(
            "(the open-file limit is {limit}: measuring {fits} connections, not {connections})"
        );
        connections = fits.max(SEQUENTIAL + 1);
    }

    println!("server benchmark: {connections} connections, {idle_secs} s idle (loopback, release)");
    let tp = measure(Kind::Tinyproto, connections, idle_secs)?;
    let raw = measure(Kind::Raw, connections, idle_secs)?;
    print_table(&tp, &raw, connections, idle_secs);
    if tp.echo_errors > 0 || raw.echo_errors > 0 {
        return Err(format!(
            "echo check failed: tinyproto {} error(s), raw {}",
            tp.echo_errors, raw.echo_errors
        )
        .into());
    }
    echo_job()
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Tinyproto,
    Raw,
    /// A raw echo on tokio (the echo job's baseline).
    TokioRaw,
    /// tokio-util's `LengthDelimitedCodec` on tokio.
    TokioCodec,
    /// The core's async driver on a plain tokio server: the protocol's own
    /// cost without this crate's threads.
    TokioTinyproto,
    /// The core's blocking driver on a plain thread per connection (no
    /// look before a send, no deadlines): the protocol's own cost on
    /// threads.
    ThreadTinyproto,
    /// tinyproto-std serving on its event threads (`set_event_handler`).
    TinyprotoEvents,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tinyproto => "tinyproto",
            Kind::Raw => "raw",
            Kind::TokioRaw => "tokio-raw",
            Kind::TokioCodec => "tokio-codec",
            Kind::TokioTinyproto => "tokio-tinyproto",
            Kind::ThreadTinyproto => "thread-tinyproto",
            Kind::TinyprotoEvents => "tinyproto-events",
        }
    }
}

/// The figures of one server kind.
#[derive(Debug, Default)]
struct Figures {
    accepts_per_s: f64,
    first_message_ms: f64,
    first_message_p99_ms: f64,
    idle_cpu_percent: f64,
    broadcast_ms: f64,
    rss_per_conn_kib: f64,
    echo_errors: usize,
}

/// A connection as the benchmark's client side holds it.
enum Peer {
    Tinyproto(Box<Conn>),
    Raw(TcpStream),
}

impl Peer {
    fn connect(kind: Kind, client: &Client, addr: SocketAddr) -> io::Result<Self> {
        match kind {
            Kind::Tinyproto | Kind::TinyprotoEvents => {
                Ok(Peer::Tinyproto(Box::new(client.connect(addr)?)))
            }
            Kind::Raw
            | Kind::TokioRaw
            | Kind::TokioCodec
            | Kind::TokioTinyproto
            | Kind::ThreadTinyproto => {
                let mut stream = TcpStream::connect(addr)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                let mut greeting = [0u8];
                stream.read_exact(&mut greeting)?;
                Ok(Peer::Raw(stream))
            }
        }
    }

    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        match self {
            Peer::Tinyproto(conn) => Ok(conn.transmit(msg)?),
            Peer::Raw(stream) => stream.write_all(msg),
        }
    }

    /// The next message of `len` bytes.
    fn receive(&mut self, len: usize) -> io::Result<Vec<u8>> {
        match self {
            Peer::Tinyproto(conn) => Ok(conn.receive()?),
            Peer::Raw(stream) => {
                let mut buf = vec![0u8; len];
                stream.read_exact(&mut buf)?;
                Ok(buf)
            }
        }
    }
}

/// A server in a child process, killed when dropped.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    /// Kept open: the child may write more.
    _output: io::Lines<BufReader<ChildStdout>>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server of `kind` in a child process and measures it.
fn measure(
    kind: Kind,
    connections: usize,
    idle_secs: u64,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let server = start_server(kind)?;
    measure_server(kind, server.child.id(), server.addr, connections, idle_secs)
}

fn measure_server(
    kind: Kind,
    pid: u32,
    addr: SocketAddr,
    connections: usize,
    idle_secs: u64,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let mut client = Client::new();
    client.set_timeout(IO_TIMEOUT);
    let mut figures = Figures::default();

    // The first message on fresh connections (each closed again).
    let mut times = Vec::with_capacity(FIRST_MESSAGES);
    for _ in 0..FIRST_MESSAGES {
        let start = Instant::now();
        let mut peer = Peer::connect(kind, &client, addr)?;
        peer.send(b"hey")?;
        let reply = peer.receive(3)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        if reply != b"hey" {
            figures.echo_errors += 1;
        }
    }
    times.sort_by(f64::total_cmp);
    figures.first_message_ms = times[times.len() / 2];
    figures.first_message_p99_ms = times[times.len() * 99 / 100];

    // Accepts and greetings, one connection after another.
    let rss_before = rss_kib(pid)?;
    let mut peers = Vec::with_capacity(connections);
    let start = Instant::now();
    for _ in 0..SEQUENTIAL {
        peers.push(Peer::connect(kind, &client, addr)?);
    }
    figures.accepts_per_s = SEQUENTIAL as f64 / start.elapsed().as_secs_f64();

    // A broadcast of 64 bytes from one connection to all the others, read
    // by several client threads at once (as many devices would).
    let payload = [0x42u8; 64];
    let start = Instant::now();
    peers[0].send(&[b"all:".as_slice(), &payload].concat())?;
    let (first, others) = peers.split_at_mut(1);
    let per_reader = others.len().div_ceil(READERS);
    let wrong: usize = thread::scope(|scope| {
        let readers: Vec<_> = others
            .chunks_mut(per_reader)
            .map(|slice| {
                scope.spawn(|| {
                    let mut wrong = 0;
                    for peer in slice.iter_mut() {
                        if peer.receive(payload.len()).map_or(true, |m| m != payload) {
                            wrong += 1;
                        }
                    }
                    wrong
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().unwrap_or(usize::MAX / 2))
            .sum()
    });
    figures.broadcast_ms = start.elapsed().as_secs_f64() * 1e3;
    figures.echo_errors += wrong;
    let peers_first = &mut first[0];
    if peers_first.receive(4)? != b"sent" {
        figures.echo_errors += 1;
    }

    // Up to all the connections, then idle.
    while peers.len() < connections {
        peers.push(Peer::connect(kind, &client, addr)?);
    }
    thread::sleep(Duration::from_secs(1));
    let rss_after = rss_kib(pid)?;
    figures.rss_per_conn_kib = (rss_after - rss_before) as f64 / peers.len() as f64;
    let cpu_before = cpu_ticks(pid)?;
    let start = Instant::now();
    thread::sleep(Duration::from_secs(idle_secs));
    let ticks = cpu_ticks(pid)? - cpu_before;
    figures.idle_cpu_percent =
        ticks as f64 / ticks_per_second() / start.elapsed().as_secs_f64() * 100.0;

    // Every connection still echoes.
    for (i, peer) in peers.iter_mut().enumerate() {
        let msg = (i as u32).to_be_bytes();
        let ok = peer.send(&msg).is_ok() && peer.receive(msg.len()).is_ok_and(|r| r == msg);
        if !ok {
            figures.echo_errors += 1;
        }
    }
    println!(
        "  {}: {} connections echoed, {} error(s)",
        kind.name(),
        peers.len(),
        figures.echo_errors
    );
    Ok(figures)
}

fn start_server(kind: Kind) -> Result<ServerProcess, Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve", kind.name()])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next().ok_or("the server said nothing")??;
    let addr = line
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected: {line}"))?
        .parse()?;
    Ok(ServerProcess {
        child,
        addr,
        _output: lines,
    })
}

/// The child: a server that echoes, and broadcasts what follows `all:`.
fn serve(kind: &str) -> Result<(), Box<dyn std::error::Error>> {
    match kind {
        "tinyproto" => {
            let mut server = Server::new();
            let addr = server.add_addr("127.0.0.1:0")?;
            server.set_conn_handler(|| {
                on_message(|conn, msg| match msg.strip_prefix(b"all:") {
                    Some(rest) => {
                        conn.active_connections().broadcast(rest, Some(conn.id()));
                        conn.transmit(b"sent")
                    }
                    None => conn.transmit(msg),
                })
            });
            println!("listening on {addr}");
            io::stdout().flush()?;
            server.start()?;
        }
        "tinyproto-events" => {
            let mut server = Server::new();
            let addr = server.add_addr("127.0.0.1:0")?;
            server.set_event_handler(|| {
                events::on_message(|conn, msg| match msg.strip_prefix(b"all:") {
                    Some(rest) => {
                        conn.active_connections().broadcast(rest, Some(conn.id()));
                        conn.send(b"sent")
                    }
                    None => conn.send(msg),
                })
            });
            println!("listening on {addr}");
            io::stdout().flush()?;
            server.start()?;
        }
        "tokio-raw" | "tokio-codec" | "tokio-tinyproto" => serve_tokio(kind)?,
        "thread-tinyproto" => serve_threads()?,
        _ => {
            rlimit::increase_nofile_limit(u64::MAX)?;
            let listener = TcpListener::bind("127.0.0.1:0")?;
            println!("listening on {}", listener.local_addr()?);
            io::stdout().flush()?;
            // One file descriptor per connection, shared with the broadcast list.
            let all: Arc<Mutex<Vec<Arc<TcpStream>>>> = Arc::default();
            for stream in listener.incoming() {
                let stream = Arc::new(stream?);
                stream.set_nodelay(true)?;
                // Listed before it is greeted, as tinyproto-std registers it.
                all.lock().unwrap().push(stream.clone());
                (&*stream).write_all(&[0xFF])?;
                let all = all.clone();
                thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || raw_echo(stream, &all))?;
            }
        }
    }
    Ok(())
}

/// Echoes 3- and 4-byte messages; `all:` and 64 bytes go to everyone else.
fn raw_echo(stream: Arc<TcpStream>, all: &Mutex<Vec<Arc<TcpStream>>>) {
    let mut stream = &*stream;
    let mut buf = [0u8; 68];
    loop {
        let n = match stream.read(&mut buf[..4]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if &buf[..n] == b"all:" && stream.read_exact(&mut buf[4..]).is_ok() {
            for other in all.lock().unwrap().iter() {
                if !std::ptr::eq(&**other, stream) {
                    let _ = (&**other).write_all(&buf[4..]);
                }
            }
            let _ = stream.write_all(b"sent");
        } else if stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    all.lock()
        .unwrap()
        .retain(|other| !std::ptr::eq(&**other, stream));
}

fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

/// User and system CPU ticks of a process (all its threads).
fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    Ok(tick(11) + tick(12))
}

fn ticks_per_second() -> f64 {
    // USER_HZ: 100 on every Linux ABI in use.
    100.0
}

fn print_table(tp: &Figures, raw: &Figures, connections: usize, idle_secs: u64) {
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "-".into()
        }
    };
    println!();
    println!(
        "| measure | tinyproto-std | raw TCP | tinyproto/raw | goal | before (30 ms polling) |"
    );
    println!("|---|---:|---:|---:|---|---|");
    println!(
        "| accepts + greetings per second ({SEQUENTIAL} sequential connects) | {:.0} | {:.0} | {} | >= 2,000 | 33 |",
        tp.accepts_per_s,
        raw.accepts_per_s,
        ratio(tp.accepts_per_s, raw.accepts_per_s)
    );
    println!(
        "| first message on a fresh connection, median (p99), ms | {:.2} ({:.2}) | {:.2} ({:.2}) | {} | <= 5 ms | 30 |",
        tp.first_message_ms,
        tp.first_message_p99_ms,
        raw.first_message_ms,
        raw.first_message_p99_ms,
        ratio(tp.first_message_ms, raw.first_message_ms)
    );
    println!(
        "| CPU with {connections} idle connections over {idle_secs} s, % of one core | {:.2} | {:.2} | - | < 2 % | 28 (1,000 conns), 150 (5,000) |",
        tp.idle_cpu_percent, raw.idle_cpu_percent
    );
    println!(
        "| 64 B broadcast reaching all of {SEQUENTIAL} connections, ms | {:.1} | {:.1} | {} | <= 50 ms | next 30 ms pass |",
        tp.broadcast_ms,
        raw.broadcast_ms,
        ratio(tp.broadcast_ms, raw.broadcast_ms)
    );
    println!(
        "| RSS per idle connection, KiB | {:.1} | {:.1} | {} | <= 48 KiB | 35-38 |",
        tp.rss_per_conn_kib,
        raw.rss_per_conn_kib,
        ratio(tp.rss_per_conn_kib, raw.rss_per_conn_kib)
    );
    println!(
        "| connections that still echo afterwards | {}/{connections} | {}/{connections} | | all | |",
        connections - tp.echo_errors.min(connections),
        connections - raw.echo_errors.min(connections)
    );
}

// ---- the echo job: 64 B request, 64 B reply, tokio clients ----

/// Connections of the echo job.
const ECHO_CONNECTIONS: [usize; 3] = [1, 100, 1_000];
/// How long each echo case runs.
const ECHO_TIME: Duration = Duration::from_secs(2);
/// The request and reply of the echo job.
const ECHO_LEN: usize = 64;

/// The echo job against each server, with the table of replies per second.
fn echo_job() -> Result<(), Box<dyn std::error::Error>> {
    rlimit::increase_nofile_limit(u64::MAX)?;
    let kinds = [
        Kind::TokioRaw,
        Kind::TokioCodec,
        Kind::TokioTinyproto,
        Kind::ThreadTinyproto,
        Kind::Tinyproto,
        Kind::TinyprotoEvents,
    ];
    let mut rows = Vec::new();
    for connections in ECHO_CONNECTIONS {
        let mut echoes = Vec::new();
        for kind in kinds {
            let server = start_server(kind)?;
            echoes.push(echo_rate(
                kind,
                server.addr,
                connections,
                Some(server.child.id()),
            )?);
        }
        rows.push((connections, echoes));
    }
    println!();
    println!("echo job: {ECHO_LEN} B request, {ECHO_LEN} B reply, tokio clients, {} s per case (loopback, release)", ECHO_TIME.as_secs());
    println!("| connections | raw tokio echo, replies/s | LengthDelimitedCodec | core async driver on tokio | core blocking driver, thread per connection | tinyproto-std, thread per connection | tinyproto-std, event threads | codec/raw | core on tokio/raw | core on threads/raw | std threads/raw | std events/raw | goal (std events) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (connections, echoes) in &rows {
        let rate = |i: usize| echoes[i].rate;
        let (raw, codec, core, threads, tp, ev) =
            (rate(0), rate(1), rate(2), rate(3), rate(4), rate(5));
        println!(
            "| {connections} | {raw:.0} | {codec:.0} | {core:.0} | {threads:.0} | {tp:.0} | {ev:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | >= 0.30 |",
            codec / raw,
            core / raw,
            threads / raw,
            tp / raw,
            ev / raw,
        );
    }
    // The rates above move with whatever else the machine runs; the CPU
    // each reply took (server and clients, both in this table) hardly
    // does, and sets the rate when the cores are the limit.
    println!();
    println!("CPU per reply, server and clients together, microseconds (what sets the rate on a machine of its own)");
    println!("| connections | raw tokio echo | LengthDelimitedCodec | core async driver on tokio | core blocking driver, thread per connection | tinyproto-std, thread per connection | tinyproto-std, event threads | core on tokio, raw/it | core on threads, raw/it | std threads, raw/it | std events, raw/it | goal (std events) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (connections, echoes) in &rows {
        let cpu = |i: usize| echoes[i].cpu_us.unwrap_or(f64::NAN);
        let (raw, codec, core, threads, tp, ev) = (cpu(0), cpu(1), cpu(2), cpu(3), cpu(4), cpu(5));
        println!(
            "| {connections} | {raw:.1} | {codec:.1} | {core:.1} | {threads:.1} | {tp:.1} | {ev:.1} | {:.2} | {:.2} | {:.2} | {:.2} | >= 0.30 |",
            raw / core,
            raw / threads,
            raw / tp,
            raw / ev,
        );
    }
    Ok(())
}

/// What one case of the echo job measured.
#[derive(Debug, Clone, Copy)]
struct Echo {
    /// Replies per second.
    rate: f64,
    /// CPU time per reply, server and clients together, in microseconds
    /// (when the server's process is known).
    cpu_us: Option<f64>,
}

/// Replies per second of `connections` tokio clients echoing against the
/// server of `kind`, and the CPU each reply took (this process's and that of
/// `server`, if given); fails if any reply is wrong.
fn echo_rate(
    kind: Kind,
    addr: SocketAddr,
    connections: usize,
    server: Option<u32>,
) -> Result<Echo, Box<dyn std::error::Error>> {
    let ticks = move || -> io::Result<u64> {
        let server = match server {
            Some(pid) => cpu_ticks(pid)?,
            None => 0,
        };
        Ok(server + cpu_ticks(std::process::id())?)
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Everyone connects (and greets) first; then all echo at once.
        let mut streams = Vec::with_capacity(connections);
        for _ in 0..connections {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            streams.push(stream);
        }
        let ticks_before = ticks()?;
        let until = tokio::time::Instant::now() + ECHO_TIME;
        let tasks: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut stream)| {
                tokio::spawn(async move {
                    let mut request = [0u8; ECHO_LEN];
                    request[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    let mut replies = 0u64;
                    match kind {
                        Kind::Tinyproto
                        | Kind::TinyprotoEvents
                        | Kind::TokioTinyproto
                        | Kind::ThreadTinyproto => {
                            let mut conn = tinyproto::asynch::Connection::new(
                                embedded_io_adapters::tokio_1::FromTokio::new(stream),
                            );
                            let mut buf = [0u8; ECHO_LEN];
                            while tokio::time::Instant::now() < until {
                                conn.transmit(&request).await.map_err(|e| e.to_string())?;
                                let reply =
                                    conn.receive(&mut buf).await.map_err(|e| e.to_string())?;
                                if reply != request {
                                    return Err("wrong reply".to_string());
                                }
                                replies += 1;
                            }
                        }
                        Kind::TokioCodec | Kind::TokioRaw | Kind::Raw => {
                            let framed = kind == Kind::TokioCodec;
                            let mut out = Vec::with_capacity(4 + ECHO_LEN);
                            if framed {
                                out.extend_from_slice(&(ECHO_LEN as u32).to_be_bytes());
                            }
                            out.extend_from_slice(&request);
                            let mut back = vec![0u8; out.len()];
                            while tokio::time::Instant::now() < until {
                                stream.write_all(&out).await.map_err(|e| e.to_string())?;
                                stream
                                    .read_exact(&mut back)
                                    .await
                                    .map_err(|e| e.to_string())?;
                                if back != out {
                                    return Err("wrong reply".to_string());
                                }
                                replies += 1;
                            }
                        }
                    }
                    Ok::<u64, String>(replies)
                })
            })
            .collect();
        let start = tokio::time::Instant::now();
        let mut total = 0u64;
        for task in tasks {
            total += task.await??;
        }
        let elapsed = start.elapsed().as_secs_f64().max(ECHO_TIME.as_secs_f64());
        let cpu_s = (ticks()? - ticks_before) as f64 / ticks_per_second();
        Ok::<Echo, Box<dyn std::error::Error>>(Echo {
            rate: total as f64 / elapsed,
            cpu_us: server.map(|_| cpu_s * 1e6 / total.max(1) as f64),
        })
    })
}

/// The child of the core's blocking driver on a thread per connection: a
/// tinyproto echo with nothing but the protocol (no look before a send, no
/// deadlines, no reactor).
fn serve_threads() -> Result<(), Box<dyn std::error::Error>> {
    rlimit::increase_nofile_limit(u64::MAX)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    for stream in listener.incoming() {
        let stream = stream?;
        stream.set_nodelay(true)?;
        thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut conn = tinyproto::blocking::Connection::new(
                    embedded_io_adapters::std::FromStd::new(stream),
                );
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(msg) = conn.receive(&mut buf) {
                    let len = msg.len();
                    if conn.transmit(&buf[..len]).is_err() {
                        return;
                    }
                }
            })?;
    }
    Ok(())
}

/// The child of a tokio echo: raw (bytes back as they come), framed by
/// `LengthDelimitedCodec` (each frame decoded, then encoded back), or
/// tinyproto through the core's async driver.
fn serve_tokio(kind: &str) -> Result<(), Box<dyn std::error::Error>> {
    let framed = kind == "tokio-codec";
    let tinyproto = kind == "tokio-tinyproto";
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};
    rlimit::increase_nofile_limit(u64::MAX)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        io::stdout().flush()?;
        loop {
            let (mut stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            if tinyproto {
                tokio::spawn(async move {
                    let mut conn = tinyproto::asynch::Connection::new(
                        embedded_io_adapters::tokio_1::FromTokio::new(stream),
                    );
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(msg) = conn.receive(&mut buf).await {
                        let len = msg.len();
                        if conn.transmit(&buf[..len]).await.is_err() {
                            return;
                        }
                    }
                });
                continue;
            }
            tokio::spawn(async move {
                let mut input = BytesMut::with_capacity(4096);
                let mut output = BytesMut::with_capacity(4096);
                let mut codec = LengthDelimitedCodec::new();
                loop {
                    match stream.read_buf(&mut input).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if framed {
                        while let Ok(Some(frame)) = codec.decode(&mut input) {
                            if codec.encode(frame.freeze(), &mut output).is_err() {
                                return;
                            }
                        }
                    } else {
                        output.extend_from_slice(&input.split());
                    }
                    if stream.write_all_buf(&mut output).await.is_err() {
                        return;
                    }
                }
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), io::Error>(())
    })?;
    Ok(())
}
