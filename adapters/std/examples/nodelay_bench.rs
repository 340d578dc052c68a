//! Measures what `TCP_NODELAY` does on loopback, with Nagle's algorithm on
//! and off (both ends alike), for a fixed time each:
//! - request/reply: the client sends a message and waits for its echo;
//! - one-way: the client sends messages back to back and the server only
//!   receives them. Here the payload of one message and the length of the
//!   next are two small writes in a row, which Nagle holds until the peer's
//!   (delayed) ACK comes.
//!
//! ```text
//! cargo run --release -p tinyproto-std --example nodelay_bench -- [seconds] [size]
//! ```

use std::time::{Duration, Instant};

use tinyproto_std::{Client, Conn, Error, Handler, Server};

struct Echo(bool);

impl Handler for Echo {
    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        if self.0 {
            conn.transmit(msg)
        } else {
            Ok(())
        }
    }
}

/// Messages per second with `nodelay` on both ends.
fn run(
    nodelay: bool,
    echo: bool,
    secs: f64,
    size: usize,
) -> Result<(f64, usize), Box<dyn std::error::Error>> {
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0")?;
    server.set_nodelay(nodelay);
    server.set_conn_handler(move || Echo(echo));
    let stop = server.stop_handle();
    let thread = std::thread::spawn(move || server.start());

    let mut client = Client::new();
    client.set_nodelay(nodelay);
    let mut conn = client.connect(addr)?;
    let msg = vec![0x42; size];
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut count = 0usize;
    // Bounded by time and by count.
    while start.elapsed() < limit && count < 10_000_000 {
        conn.transmit(&msg)?;
        if echo {
            assert_eq!(conn.receive()?.len(), size);
        }
        count += 1;
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    conn.close();
    stop.stop();
    thread.join().expect("server thread")?;
    Ok((rate, count))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(32);
    println!("{size}-byte messages over loopback, {secs} s each");
    for (echo, what) in [(true, "request/reply"), (false, "one-way")] {
        for nodelay in [true, false] {
            let (rate, count) = run(nodelay, echo, secs, size)?;
            println!(
                "{what:<13} TCP_NODELAY {nodelay:<5}: {rate:>9.0} messages/s ({count} in total), {:>8.1} us each",
                1e6 / rate
            );
        }
    }
    Ok(())
}
