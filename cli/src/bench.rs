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
//!   per message (one round trip). tinyproto: the client sends the messages one
//!   after the other; the server takes each as `serve --sink` does.
//! - **large messages**: the raw case streams `count × size` bytes and waits
//!   for one byte at the end; tinyproto sends `count` messages and waits for
//!   an empty message at the end.
//!
//! Each case runs [`RUNS`] times, raw and tinyproto alternating, and the best
//! run of each is reported.
//!
//! Before the clock starts each client tells its server how many messages to
//! expect (eight bytes, raw or as a tinyproto message) and all clients meet at
//! a barrier; the clock stops when every client has its final answer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use tinyproto::blocking::Connection;
use tinyproto::MAX_MESSAGE_LEN;

use crate::exit::{self, Failure};
use crate::send::configure;

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
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| fail("bind", e))?;
    let addr = listener.local_addr().map_err(|e| fail("bind", e))?;
    let streaming = size > STREAM_ABOVE;
    let payload: Arc<[u8]> = (0..size).map(|i| i as u8).collect::<Vec<u8>>().into();

    let server = thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || serve_all(listener, connections, case, size, streaming))
        .map_err(|e| fail("spawn", e))?;

    // Connect one after the other: a thousand connects at once would
    // overflow the listen backlog (128) and wait out SYN retransmissions.
    let mut streams = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        let stream = TcpStream::connect(addr).map_err(|e| fail("connect", e))?;
        configure(&stream, Some(SOCKET_TIMEOUT)).map_err(|e| fail("socket options", e))?;
        streams.push(stream);
    }
    let barrier = Arc::new(Barrier::new(connections as usize + 1));
    let mut clients = Vec::with_capacity(connections as usize);
    for (i, stream) in (0..u64::from(connections)).zip(streams) {
        let n = count / u64::from(connections) + u64::from(i < count % u64::from(connections));
        let barrier = Arc::clone(&barrier);
        let payload = Arc::clone(&payload);
        let client = thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || client(case, stream, n, &payload, &barrier, streaming))
            .map_err(|e| fail("spawn", e))?;
        clients.push(client);
    }
    barrier.wait();
    let start = Instant::now();
    let mut errors = Vec::new();
    for client in clients {
        match client.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("client thread panicked".to_owned()),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
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

/// Accepts `connections` connections and serves each on its own thread.
fn serve_all(
    listener: TcpListener,
    connections: u32,
    case: Case,
    size: u32,
    streaming: bool,
) -> Result<(), String> {
    let mut handlers = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        configure(&stream, Some(SOCKET_TIMEOUT)).map_err(|e| format!("socket: {e}"))?;
        let handler = thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || match case {
                Case::Raw => raw_server(stream, size, streaming).map_err(|e| e.to_string()),
                Case::Tinyproto => tinyproto_server(stream).map_err(|e| e.to_string()),
            })
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
    case: Case,
    stream: TcpStream,
    n: u64,
    payload: &[u8],
    barrier: &Barrier,
    streaming: bool,
) -> Result<(), String> {
    match case {
        Case::Raw => raw_client(stream, n, payload, barrier, streaming).map_err(|e| e.to_string()),
        Case::Tinyproto => tinyproto_client(stream, n, payload, barrier).map_err(|e| e.to_string()),
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

fn tinyproto_client(
    stream: TcpStream,
    n: u64,
    payload: &[u8],
    barrier: &Barrier,
) -> Result<(), tinyproto::Error<std::io::Error>> {
    // Writes wait for the next read: the end of one message and the length
    // of the next leave in one segment (FlushPolicy::BeforeRead).
    let mut conn = Connection::from_std_buffered(stream);
    let setup = conn.transmit(&n.to_be_bytes());
    barrier.wait();
    setup?;
    for _ in 0..n {
        conn.transmit(payload)?;
    }
    // The server's empty message says it has taken every message.
    conn.receive(&mut [])?;
    // Our status byte for that empty message is still held back.
    conn.flush()?;
    Ok(())
}

fn tinyproto_server(stream: TcpStream) -> Result<(), tinyproto::Error<std::io::Error>> {
    let mut conn = Connection::from_std(stream);
    let mut count = [0u8; 8];
    conn.receive(&mut count)?;
    let n = u64::from_be_bytes(count);
    let mut buf = vec![0u8; READ_CHUNK];
    for _ in 0..n {
        // What `serve --sink` does: chunks, never the whole message.
        let mut msg = conn.begin_receive(MAX_MESSAGE_LEN)?;
        while msg.read(&mut buf)? > 0 {}
    }
    conn.transmit(&[])?;
    match conn.receive(&mut []) {
        Err(tinyproto::Error::Closed) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
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
