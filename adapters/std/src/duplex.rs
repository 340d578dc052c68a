//! One connection per direction: the pattern in which both sides send
//! whenever they like, with no conflict by construction.
//!
//! The protocol is half-duplex: on one connection, a message of each side
//! that start at the same moment cross, and both are lost (a
//! [`Conflict`](tinyproto::Error::Conflict)). A [`Duplex`] link is two
//! connections to one server: on the *up* half only the client sends, on
//! the *down* half only the server does (after the client's hello). Each
//! half is a plain tinyproto connection, so the wire protocol is unchanged;
//! the pairing is a hello in the first message of each half
//! ([`tinyproto::duplex`]).
//!
//! A server in duplex mode ([`Server::set_duplex`](crate::Server::set_duplex))
//! sends nothing on a connection before its hello, never sends on an up
//! half, and routes [`Connections::send_to`](crate::Connections::send_to)
//! and [`broadcast`](crate::Connections::broadcast) to down halves: a
//! message for an up half's id goes to its pair.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

pub use tinyproto::duplex::Direction;
use tinyproto::duplex::{self, WELCOME};

use crate::conn::Conn;
use crate::error::{Deadline, Error};

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

/// The first message of the `direction` half of link `link`.
pub(crate) fn hello(direction: Direction, link: u128) -> Vec<u8> {
    let mut buf = [0u8; duplex::HELLO_MAX_LEN];
    duplex::hello(direction, link, &mut buf).to_vec()
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
    fn test_two_links_get_two_ids() {
        assert_ne!(new_pair_id(), new_pair_id());
    }
}
