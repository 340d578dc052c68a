//! The footprint's sans-IO superloop (`examples/footprint`, feature
//! `sans-io`) run on the host: one pass per step of the operation in flight
//! through `Machine::step` and `Machine::moved`, deciding after an error by
//! `Machine::is_broken`. Over the same peer bytes it writes exactly what the
//! footprint's driver build writes (the blocking driver's `greet`, then
//! `receive` and `transmit` in a loop, deciding by `Error::is_recoverable`).

// Shared with the driver tests; this one needs only the scripted transport.
#[allow(dead_code)]
mod support;

use support::{ScriptIo, Shape};
use tinyproto::blocking::Connection;
use tinyproto::{Io, Machine, Moved, Operation, Step};

/// The application's buffer, as in the footprint.
const BUF_LEN: usize = 256;
/// Passes a run may take: every script here ends long before.
const MAX_PASSES: usize = 100_000;

/// A polled UART in memory: at most `chunk` bytes a call, nothing at all on
/// every third call (not ready yet), and the end of the stream (a read of 0)
/// once the peer's bytes are used up, so that a run ends.
struct Uart<'p> {
    rx: &'p [u8],
    tx: Vec<u8>,
    chunk: usize,
    calls: usize,
}

impl Uart<'_> {
    /// The footprint's `poll`, with a stream that can end.
    fn poll(&mut self, io: Io<'_>) -> Option<Moved> {
        self.calls += 1;
        if self.calls % 3 == 0 {
            return None;
        }
        match io {
            Io::Write(bytes) => {
                let n = bytes.len().min(self.chunk);
                self.tx.extend_from_slice(&bytes[..n]);
                Some(Moved::Wrote(n))
            }
            Io::Read(buf) => {
                let n = buf.len().min(self.rx.len()).min(self.chunk);
                buf[..n].copy_from_slice(&self.rx[..n]);
                self.rx = &self.rx[n..];
                Some(Moved::Read(n))
            }
            Io::Flush => Some(Moved::Flushed),
        }
    }
}

/// The footprint's superloop; `true` if it returned (within the budget).
fn superloop(uart: &mut Uart<'_>) -> bool {
    let mut machine = Machine::new();
    let mut buf = [0u8; BUF_LEN];
    let buf = &mut buf[..];
    let mut echo: Option<usize> = None;
    for _ in 0..MAX_PASSES {
        let op = match echo {
            None => Operation::Receive(buf),
            Some(len) => match buf.get(..len) {
                Some(msg) => Operation::Transmit(msg),
                None => return true,
            },
        };
        let result = match machine.step(op) {
            Step::Io(io) => match uart.poll(io).map(|moved| machine.moved(moved)) {
                Some(Err(e)) => Err(e),
                _ => continue,
            },
            Step::Done(result) => result,
        };
        echo = match result {
            Err(_) if machine.is_broken() => return true,
            Ok(len) if echo.is_none() => Some(len as usize),
            _ => None,
        };
    }
    false
}

/// The footprint's driver build, over the same peer bytes: what it wrote,
/// and how many of the peer's bytes it left unread.
fn driver(peer: &[u8]) -> (Vec<u8>, usize) {
    let mut conn = Connection::new(ScriptIo::new(peer.to_vec(), Shape::WHOLE));
    let mut buf = [0u8; BUF_LEN];
    if conn.greet().is_ok() {
        for _ in 0..MAX_PASSES {
            match conn.receive(&mut buf) {
                Ok(msg) => {
                    let msg = msg.to_vec();
                    if let Err(e) = conn.transmit(&msg) {
                        if !e.is_recoverable() {
                            break;
                        }
                    }
                }
                Err(e) if e.is_recoverable() => {}
                Err(_) => break,
            }
        }
    }
    let io = conn.into_inner();
    let unread = io.unread().len();
    (io.output, unread)
}

#[test]
fn test_the_superloop_writes_what_the_driver_writes() {
    let mut long = vec![0, 0, 1, 44]; // 300 bytes: over the buffer
    long.extend([0, 0, 0, 2, b'o', b'k', 0xFF]);
    let scripts: [(&str, Vec<u8>); 7] = [
        (
            "two messages echoed, then the end",
            [&[0xFF, 0, 0, 0, 3][..], b"abc", &[0xFF, 0, 0, 0, 0, 0xFF]].concat(),
        ),
        (
            "a message over the buffer is refused, the next echoed",
            [&[0xFF][..], &long].concat(),
        ),
        (
            "our echo rejected, the next accepted",
            [&[0xFF, 0, 0, 0, 1, b'x', 0x00, 0, 0, 0, 1, b'y', 0xFF][..]].concat(),
        ),
        ("a full server", vec![0xFE]),
        ("no greeting", vec![0x42, 0, 0, 0, 1, b'z']),
        (
            "the peer's own length where our status was due",
            vec![0xFF, 0, 0, 0, 1, b'q', 0x05, 0, 0, 0],
        ),
        ("the end inside a payload", vec![0xFF, 0, 0, 0, 9, b'p']),
    ];
    for (what, peer) in scripts {
        let (expected, unread) = driver(&peer);
        for chunk in [1, 2, 3, BUF_LEN] {
            let mut uart = Uart {
                rx: &peer,
                tx: Vec::new(),
                chunk,
                calls: 0,
            };
            assert!(superloop(&mut uart), "{what}, chunk {chunk}: never ended");
            assert_eq!(uart.tx, expected, "{what}, chunk {chunk}");
            assert_eq!(
                uart.rx.len(),
                unread,
                "{what}, chunk {chunk}: bytes left unread"
            );
        }
    }
}

/// The scripts above do exercise the echo: the driver's output is the
/// greeting, the answers and the echoed messages.
#[test]
fn test_the_driver_echoes() {
    let peer = [&[0xFF, 0, 0, 0, 3][..], b"abc", &[0xFF]].concat();
    assert_eq!(
        driver(&peer).0,
        [&[0xFF, 0xFF, 0, 0, 0, 3][..], b"abc"].concat(),
        "greeting, accept, echo"
    );
}
