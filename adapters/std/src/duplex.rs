//! One connection per direction: the pattern in which both sides send
//! whenever they like, with no conflict by construction.
//!
//! The protocol is half-duplex: on one connection, a message of each side
//! that start at the same moment cross, and both are lost (a
//! [`Conflict`](tinyproto::Error::Conflict)). A [`Duplex`] link is two
//! connections to one server: on the *up* half only the client sends, on
//! the *down* half only the server does (after the client's hello). Each
//! half is a plain tinyproto connection, so the wire protocol is unchanged;
//! the pairing is this crate's convention, in the first message of each
//! half (see `PROTOCOL.md`):
//!
//! ```text
//! up half:   client -> "tinyproto/duplex up <32 hex digits>"
//! down half: client -> "tinyproto/duplex down <the same digits>"
//!            server -> "tinyproto/duplex ok"     (the down half is registered)
//! ```
//!
//! A server in duplex mode ([`Server::set_duplex`](crate::Server::set_duplex))
//! sends nothing on a connection before its hello, never sends on an up
//! half, and routes [`Connections::send_to`](crate::Connections::send_to)
//! and [`broadcast`](crate::Connections::broadcast) to down halves: a
//! message for an up half's id goes to its pair.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use crate::conn::Conn;
use crate::error::{Deadline, Error};

/// Which way messages go on one half of a [`Duplex`] link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server: only the client sends.
    Up,
    /// Server to client: only the server sends (after the client's hello).
    Down,
}

/// Where a connection of a duplex server stands, as the registry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Half {
    /// Not a duplex connection: everything goes to it.
    Plain,
    /// Duplex, and its hello has not arrived: nothing goes to it yet.
    Pending,
    /// One half of the pair with this id.
    Paired(Direction, u128),
}

const PREFIX: &[u8] = b"tinyproto/duplex ";

/// The server's answer on a down half, once that half is registered.
pub(crate) const WELCOME: &[u8] = b"tinyproto/duplex ok";

/// The first message of one half of pair `pair`.
pub(crate) fn hello(direction: Direction, pair: u128) -> Vec<u8> {
    let role = match direction {
        Direction::Up => "up",
        Direction::Down => "down",
    };
    let mut msg = PREFIX.to_vec();
    msg.extend_from_slice(format!("{role} {pair:032x}").as_bytes());
    msg
}

/// Reads a hello: which half, of which pair; `None` for anything else.
pub(crate) fn parse_hello(msg: &[u8]) -> Option<(Direction, u128)> {
    let rest = std::str::from_utf8(msg.strip_prefix(PREFIX)?).ok()?;
    let (role, pair) = rest.split_once(' ')?;
    let direction = match role {
        "up" => Direction::Up,
        "down" => Direction::Down,
        _ => return None,
    };
    if pair.len() != 32 {
        return None;
    }
    Some((direction, u128::from_str_radix(pair, 16).ok()?))
}

/// A fresh pair id: 128 bits from the standard library's randomly keyed
/// hasher (an id names a pair, it guards nothing).
fn new_pair_id() -> u128 {
    let now = Instant::now();
    let high = RandomState::new().hash_one(now);
    let low = RandomState::new().hash_one((now, std::process::id()));
    u128::from(high) << 64 | u128::from(low)
}

/// Two connections to one duplex server, one per direction: send on
/// [`up`](Self::up) and receive on [`down`](Self::down) whenever you like,
/// from one thread or two ([`split`](Self::split)); nothing can cross.
///
/// ```no_run
/// # fn demo() -> Result<(), tinyproto_std::Error> {
/// let link = tinyproto_std::Client::new().connect_duplex("127.0.0.1:7000")?;
/// let (mut up, mut down) = link.split();
/// std::thread::spawn(move || {
///     while let Ok(msg) = down.receive() {
///         println!("{}", String::from_utf8_lossy(&msg));
///     }
/// });
/// up.transmit(b"hello, everyone")?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Duplex {
    /// The half this side sends on.
    pub up: Conn,
    /// The half this side receives on.
    pub down: Conn,
}

impl Duplex {
    /// Opens both halves with `connect` (which connects and greets), down
    /// first: when this returns, the server has registered both.
    pub(crate) fn open(
        connect: impl Fn() -> Result<Conn, Error>,
        welcome_wait: Duration,
    ) -> Result<Self, Error> {
        let pair = new_pair_id();
        let mut down = connect()?;
        down.transmit(&hello(Direction::Down, pair))?;
        match down.try_receive(welcome_wait)? {
            Some(msg) if msg == WELCOME => {}
            Some(_) => return Err(Error::NotDuplex),
            None => return Err(Error::Timeout(Deadline::Receive)),
        }
        let mut up = connect()?;
        up.transmit(&hello(Direction::Up, pair))?;
        Ok(Self { up, down })
    }

    /// Sends one whole message on the up half.
    pub fn transmit(&mut self, msg: &[u8]) -> Result<(), Error> {
        self.up.transmit(msg)
    }

    /// Receives one whole message on the down half (see [`Conn::receive`]).
    pub fn receive(&mut self) -> Result<Vec<u8>, Error> {
        self.down.receive()
    }

    /// Like [`receive`](Self::receive), waiting only `wait` for a message
    /// to begin.
    pub fn try_receive(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, Error> {
        self.down.try_receive(wait)
    }

    /// The two halves, to send and receive from different threads:
    /// `(up, down)`.
    pub fn split(self) -> (Conn, Conn) {
        (self.up, self.down)
    }

    /// Closes both halves.
    pub fn close(self) {
        self.up.close();
        self.down.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hello_round_trips_and_strangers_are_not_hellos() {
        let pair = new_pair_id();
        assert_ne!(pair, new_pair_id(), "two links, two ids");
        for direction in [Direction::Up, Direction::Down] {
            assert_eq!(
                parse_hello(&hello(direction, pair)),
                Some((direction, pair))
            );
        }
        for stranger in [
            &b""[..],
            b"hello",
            b"tinyproto/duplex",
            b"tinyproto/duplex sideways 00000000000000000000000000000000",
            b"tinyproto/duplex up 123",
            b"tinyproto/duplex up 0000000000000000000000000000000g",
            WELCOME,
        ] {
            assert_eq!(parse_hello(stranger), None, "{stranger:?}");
        }
    }
}
