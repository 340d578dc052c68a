//! `tinyproto bench`: tinyproto against a raw TCP baseline, over loopback, in
//! this one process.
//!
//! Both cases use the same sockets (TCP_NODELAY on both ends, default buffers),
//! the same threads (one client and one server thread per connection), the
//! same read chunk and the same payload bytes:
//!
//! - **small messages** (up to [`STREAM_ABOVE`] bytes): the raw case is a
//!   ping-pong — the client writes the payload (one byte if it is empty) and
//!   waits for a one-byte answer — which is what tinyproto's status byte costs
//!   per message (one round trip). tinyproto: the client sends the messages
//!   back to back with `Conn::transmit_all`; the server takes each in chunks
//!   as `serve --sink` does.
//! - **large messages**: the raw case streams `count × size` bytes and waits
//!   for one byte at the end; tinyproto sends `count` messages and waits for
//!   an empty message at the end.
//!
//! Each case runs [`RUNS`] times, raw and tinyproto alternating, and the best
//! run of each is reported.
//!
//! The tinyproto case is `tinyproto-std`'s public API on both ends (its
//! `Client` and a `Server` with a handler), exactly what a user writes; the
//! raw case is a thread per connection on each end.
//!
//! Before the clock starts each client tells its server how many messages to
//! expect (eight bytes, raw or as a tinyproto message) and all clients meet at
//! a barrier; the clock stops when every client has its final answer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use tinyproto_std::{Client, Conn, Error, Handler, Server, StopHandle, Take, Timeouts};

use crate::exit::{self, Failure};

/// Messages above this size are measured against raw streaming, smaller ones
/// against a raw ping-pong.
pub const STREAM_ABOVE: u32 = 64 * 1024;
/// Read chunk of every server, raw and tinyproto alike.
const READ_CHUNK: usize = 128 * 1024;
/// Default messages per case for small messages.
const SMALL_COUNT: u64 = 20_000;
/// Default bytes per case for large messages.
const LARGE_BYTES: u64 = 1 << 30;
/// Runs of each case, alternating; the best counts (the machine may be busy
/// with other work; interference only ever slows a run down).
const RUNS: usize = 3;
/// Stack of the bench threads (there may be thousands of them).
const STACK: usize = 256 * 1024;
/// Nothing in the bench waits longer than this on a socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);

/// What `bench` was asked to do.
#[derive(Debug)]
pub struct BenchArgs {
    /// Message size; both default sizes when `None`.
    pub size: Option<u32>,
    /// Messages per case (total over all connections).
    pub count: Option<u64>,
    /// Concurrent connections.
    pub connections: u32,
    /// JSON lines instead of the table.
    pub json: bool,
}

/// Which implementation a case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Raw,
    Tinyproto,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Raw => "raw",
            Case::Tinyproto => "tinyproto",
        }
    }
}

/// One measured case.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    case: Case,
    size: u32,
    count: u64,
    connections: u32,
    msgs_per_s: f64,
    mb_per_s: f64,
}

impl Measurement {
    fn best(self, other: Self) -> Self {
        if other.msgs_per_s > self.msgs_per_s {
            other
        } else {
            self
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"case\": \"{}\", \"size\": {}, \"count\": {}, \"connections\": {}, \"msgs_per_s\": {:.3}, \"mb_per_s\": {:.3}}}",
            self.case.name(),
            self.size,
            self.count,
            self.connections,
            self.msgs_per_s,
            self.mb_per_s
        )
    }

    fn row(&self, ratio: Option<f64>) -> String {
        let ratio = ratio.map_or(String::new(), |r| format!("{r:.3}"));
        format!(
            "{:<10} {:>9} {:>9} {:>6} {:>13.1} {:>11.2} {:>14}",
            self.case.name(),
            self.size,
            self.count,
            self.connections,
            self.msgs_per_s,
            self.mb_per_s,
            ratio
        )
    }
}

/// Runs `bench`.
pub fn run(args: &BenchArgs) -> Result<(), Failure> {
    let sizes = args.size.map_or(vec![64, 1 << 20], |s| vec![s]);
    if !args.json {
        println!(
            "{:<10} {:>9} {:>9} {:>6} {:>13} {:>11} {:>14}",
            "case", "size", "count", "conns", "msgs/s", "MB/s", "tinyproto/raw"
        );
    }
    for size in sizes {
        let count = args.count.unwrap_or(if size <= STREAM_ABOVE {
            SMALL_COUNT
        } else {
            (LARGE_BYTES / u64::from(size)).max(16)
        });
        let mut raw = measure(Case::Raw, size, count, args.connections)?;
        let mut tiny = measure(Case::Tinyproto, size, count, args.connections)?;
        for _ in 1..RUNS {
            raw = raw.best(measure(Case::Raw, size, count, args.connections)?);
            tiny = tiny.best(measure(Case::Tinyproto, size, count, args.connections)?);
        }
        if args.json {
            println!("{}", raw.json());
            println!("{}", tiny.json());
        } else {
            println!("{}", raw.row(None));
            println!("{}", tiny.row(Some(tiny.msgs_per_s / raw.msgs_per_s)));
        }
    }
    Ok(())
}

/// Runs one case and times it.
fn measure(case: Case, size: u32, count: u64, connections: u32) -> Result<Measurement, Failure> {
    let fail = |what: &str, e: std::io::Error| Failure::io(format!("bench: {what}"), e);
    let streaming = size > STREAM_ABOVE;
    let payload: Arc<[u8]> = (0..size).map(|i| i as u8).collect::<Vec<u8>>().into();
    let (addr, server) = match case {
        Case::Raw => {
            let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| fail("bind", e))?;
            let addr = listener.local_addr().map_err(|e| fail("bind", e))?;
            let thread = thread::Builder::new()
                .stack_size(STACK)
                .spawn(move || serve_all(listener, connections, size, streaming))
                .map_err(|e| fail("spawn", e))?;
            (addr, ServerSide::Raw(thread))
        }
        Case::Tinyproto => {
            let mut server = Server::new();
            let addr = server
                .add_addr("127.0.0.1:0")
                .map_err(|e| fail("bind", e))?;
            server.set_timeouts(bench_timeouts());
            server.set_conn_handler(Counter::default);
            let stop = server.stop_handle();
            let thread = thread::Builder::new()
                .stack_size(STACK)
                .spawn(move || server.start().map_err(|e| format!("server: {e}")))
                .map_err(|e| fail("spawn", e))?;
            (addr, ServerSide::Tinyproto(stop, thread))
        }
    };

    // Connect one after the other: a thousand connects at once would
    // overflow the listen backlog and wait out SYN retransmissions.
    let mut connector = Client::new();
    connector.set_timeouts(bench_timeouts());
    let mut streams = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        streams.push(match case {
            Case::Raw => {
                let stream = TcpStream::connect(addr).map_err(|e| fail("connect", e))?;
                configure(&stream, Some(SOCKET_TIMEOUT)).map_err(|e| fail("socket options", e))?;
                Peer::Raw(stream)
            }
            Case::Tinyproto => Peer::Tinyproto(Box::new(
                connector
                    .connect(addr)
                    .map_err(|e| fail("connect", e.into()))?,
            )),
        });
    }
    let barrier = Arc::new(Barrier::new(connections as usize + 1));
    let mut clients = Vec::with_capacity(connections as usize);
    for (i, stream) in (0..u64::from(connections)).zip(streams) {
        let n = count / u64::from(connections) + u64::from(i < count % u64::from(connections));
        let barrier = Arc::clone(&barrier);
        let payload = Arc::clone(&payload);
        let client = thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || client(stream, n, &payload, &barrier, streaming))
            .map_err(|e| fail("spawn", e))?;
        clients.push(client);
    }
    // The clock starts before the release, not after: a client may finish
    // a short run before this thread is scheduled again, and a time taken
    // then would measure almost nothing (the clients are already waiting
    // at the barrier, so this adds only their release).
    let start = Instant::now();
    barrier.wait();
    let mut errors = Vec::new();
    for client in clients {
        match client.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("client thread panicked".to_owned()),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let server = match server {
        ServerSide::Raw(thread) => thread,
        ServerSide::Tinyproto(stop, thread) => {
            stop.stop();
            thread
        }
    };
    match server.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => errors.push(e),
        Err(_) => errors.push("server thread panicked".to_owned()),
    }
    if let Some(first) = errors.first() {
        return Err(Failure::new(
            exit::OTHER,
            format!(
                "bench {} size {size}: {} error(s), first: {first}",
                case.name(),
                errors.len()
            ),
        ));
    }
    let msgs_per_s = count as f64 / elapsed;
    Ok(Measurement {
        case,
        size,
        count,
        connections,
        msgs_per_s,
        mb_per_s: msgs_per_s * f64::from(size) / 1e6,
    })
}

/// The socket options of the raw case: no Nagle delay, and the timeout on
/// every read and write.
fn configure(stream: &TcpStream, timeout: Option<Duration>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)
}

/// The server of a case.
enum ServerSide {
    Raw(thread::JoinHandle<Result<(), String>>),
    Tinyproto(StopHandle, thread::JoinHandle<Result<(), String>>),
}

/// The client end of a connection.
enum Peer {
    Raw(TcpStream),
    Tinyproto(Box<Conn>),
}

/// Every deadline of the tinyproto case: as long as the raw sockets'.
fn bench_timeouts() -> Timeouts {
    Timeouts::default()
        .with_connect(SOCKET_TIMEOUT)
        .with_greeting(SOCKET_TIMEOUT)
        .with_message(SOCKET_TIMEOUT)
        .with_write(SOCKET_TIMEOUT)
        .with_receive(SOCKET_TIMEOUT)
}

/// Accepts `connections` raw connections and serves each on its own thread.
fn serve_all(
    listener: TcpListener,
    connections: u32,
    size: u32,
    streaming: bool,
) -> Result<(), String> {
    let mut handlers = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        configure(&stream, Some(SOCKET_TIMEOUT)).map_err(|e| format!("socket: {e}"))?;
        let handler = thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || raw_server(stream, size, streaming).map_err(|e| e.to_string()))
            .map_err(|e| format!("spawn: {e}"))?;
        handlers.push(handler);
    }
    let mut first_error = Ok(());
    for handler in handlers {
        let result = handler
            .join()
            .unwrap_or_else(|_| Err("server thread panicked".to_owned()));
        if first_error.is_ok() {
            first_error = result.map_err(|e| format!("server: {e}"));
        }
    }
    first_error
}

/// One client connection: setup, barrier, the timed messages, the final answer.
fn client(
    peer: Peer,
    n: u64,
    payload: &[u8],
    barrier: &Barrier,
    streaming: bool,
) -> Result<(), String> {
    match peer {
        Peer::Raw(stream) => {
            raw_client(stream, n, payload, barrier, streaming).map_err(|e| e.to_string())
        }
        Peer::Tinyproto(conn) => {
            tinyproto_client(*conn, n, payload, barrier).map_err(|e| e.to_string())
        }
    }
}

fn raw_client(
    mut stream: TcpStream,
    n: u64,
    payload: &[u8],
    barrier: &Barrier,
    streaming: bool,
) -> std::io::Result<()> {
    let setup = stream.write_all(&n.to_be_bytes());
    barrier.wait();
    setup?;
    let ping: &[u8] = if payload.is_empty() { &[0] } else { payload };
    let mut ack = [0u8];
    for _ in 0..n {
        stream.write_all(ping)?;
        if !streaming {
            stream.read_exact(&mut ack)?;
        }
    }
    if streaming {
        stream.read_exact(&mut ack)?;
    }
    Ok(())
}

fn raw_server(mut stream: TcpStream, size: u32, streaming: bool) -> std::io::Result<()> {
    let mut count = [0u8; 8];
    stream.read_exact(&mut count)?;
    let n = u64::from_be_bytes(count);
    let mut buf = vec![0u8; READ_CHUNK];
    let per_message = u64::from(size.max(1));
    if streaming {
        drain(&mut stream, &mut buf, n * per_message)?;
        stream.write_all(&[0xFF])?;
    } else {
        for _ in 0..n {
            drain(&mut stream, &mut buf, per_message)?;
            stream.write_all(&[0xFF])?;
        }
    }
    // Wait for the client to close.
    let _ = stream.read(&mut buf);
    Ok(())
}

/// Reads and discards exactly `total` bytes.
fn drain(stream: &mut TcpStream, buf: &mut [u8], mut total: u64) -> std::io::Result<()> {
    while total > 0 {
        let want = buf.len().min(usize::try_from(total).unwrap_or(usize::MAX));
        let n = stream.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        total -= n as u64;
    }
    Ok(())
}

/// What a library user writes for a stream of messages: `transmit_all`
/// sends them back to back (the end of one and the length of the next leave
/// together).
fn tinyproto_client(
    mut conn: Conn,
    n: u64,
    payload: &[u8],
    barrier: &Barrier,
) -> Result<(), Error> {
    let setup = conn.transmit(&n.to_be_bytes());
    barrier.wait();
    setup?;
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    conn.transmit_all(std::iter::repeat_n(payload, n))
        .map_err(|(_, e)| e)?;
    // The server's empty message says it has taken every message.
    conn.receive()?;
    conn.close();
    Ok(())
}

/// The tinyproto server's handler: the first message says how many follow;
/// it takes them in chunks (what `serve --sink` does) and answers an empty
/// message when all are in.
#[derive(Debug, Default)]
struct Counter {
    expected: Option<u64>,
    seen: u64,
}

impl Counter {
    fn answer_when_done(&mut self, conn: &mut Conn) -> Result<(), Error> {
        if self.expected == Some(self.seen) {
            conn.transmit(&[])?;
        }
        Ok(())
    }
}

impl Handler for Counter {
    fn message_announced(&mut self, _conn: &Conn, _len: u32) -> Take {
        if self.expected.is_none() {
            Take::Whole
        } else {
            Take::Chunks
        }
    }

    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        let count = msg.try_into().map(u64::from_be_bytes).unwrap_or(0);
        self.expected = Some(count);
        self.answer_when_done(conn)
    }

    fn transmission_complete(&mut self, conn: &mut Conn, _len: u32) -> Result<(), Error> {
        self.seen += 1;
        self.answer_when_done(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_json_line_has_the_contract_fields() {
        let m = Measurement {
            case: Case::Tinyproto,
            size: 64,
            count: 10,
            connections: 2,
            msgs_per_s: 1234.5,
            mb_per_s: 0.079,
        };
        assert_eq!(
            m.json(),
            r#"{"case": "tinyproto", "size": 64, "count": 10, "connections": 2, "msgs_per_s": 1234.500, "mb_per_s": 0.079}"#
        );
    }

    #[test]
    fn test_measure_both_cases_small_and_streaming() {
        for size in [0, 64, STREAM_ABOVE + 1] {
            for case in [Case::Raw, Case::Tinyproto] {
                let m = measure(case, size, 20, 3).unwrap();
                assert_eq!(m.count, 20);
                assert!(m.msgs_per_s > 0.0, "{m:?}");
            }
        }
    }
}
