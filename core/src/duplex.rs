//! The hello that pairs two connections into a duplex link: one connection
//! per direction, the pattern in which both sides send whenever they like.
//!
//! The protocol is half-duplex: two messages that start at the same moment
//! on one connection cross ([`Error::Conflict`](crate::Error::Conflict)). A
//! link of two connections cannot cross: on its *up* half only the client
//! starts messages, on its *down* half only the server does. Each half is a
//! plain tinyproto connection; the pairing is a convention in the first
//! message of each half (also in `PROTOCOL.md`):
//!
//! ```text
//! down half: client -> "tinyproto/duplex down <32 lowercase hex digits>"
//!            server -> "tinyproto/duplex ok"        (the down half is registered)
//! up half:   client -> "tinyproto/duplex up <the same 32 digits>"
//! ```
//!
//! The server adapters keep the rule for the user (tinyproto-std's
//! `Server::set_duplex`); this module is only the wire form of the hello,
//! without allocation, for every adapter.

/// Which way messages go on one half of a duplex link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Direction {
    /// Client to server: only the client starts messages.
    Up,
    /// Server to client: only the server starts messages (after the
    /// client's hello).
    Down,
}

/// What every hello begins with.
const PREFIX: &[u8] = b"tinyproto/duplex ";

/// Digits of the link id in a hello.
const ID_DIGITS: usize = 32;

/// The longest hello (a down half's): the buffer [`hello`] fills.
pub const HELLO_MAX_LEN: usize = PREFIX.len() + "down ".len() + ID_DIGITS;

/// The server's answer to a down half's hello, once that half is
/// registered: from then on the server may send on it.
pub const WELCOME: &[u8] = b"tinyproto/duplex ok";

/// Writes the hello of the `direction` half of link `link` into `buf` and
/// returns it.
pub fn hello(direction: Direction, link: u128, buf: &mut [u8; HELLO_MAX_LEN]) -> &[u8] {
    let role: &[u8] = match direction {
        Direction::Up => b"up ",
        Direction::Down => b"down ",
    };
    let head = PREFIX.len() + role.len();
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    buf[PREFIX.len()..head].copy_from_slice(role);
    for (i, slot) in buf[head..head + ID_DIGITS].iter_mut().enumerate() {
        let nibble = (link >> (4 * (ID_DIGITS - 1 - i))) as u8 & 0xF;
        *slot = b"0123456789abcdef"[usize::from(nibble)];
    }
    &buf[..head + ID_DIGITS]
}

/// Reads a hello: which half of which link; `None` for any other message.
pub fn parse_hello(msg: &[u8]) -> Option<(Direction, u128)> {
    let rest = msg.strip_prefix(PREFIX)?;
    let (direction, digits) = if let Some(digits) = rest.strip_prefix(b"up ") {
        (Direction::Up, digits)
    } else {
        (Direction::Down, rest.strip_prefix(b"down ")?)
    };
    if digits.len() != ID_DIGITS {
        return None;
    }
    let mut link = 0u128;
    for &digit in digits {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        link = link << 4 | u128::from(nibble);
    }
    Some((direction, link))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hello_round_trips_and_strangers_are_not_hellos() {
        let mut buf = [0u8; HELLO_MAX_LEN];
        for link in [0, 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            for direction in [Direction::Up, Direction::Down] {
                let msg = hello(direction, link, &mut buf).to_vec();
                assert_eq!(parse_hello(&msg), Some((direction, link)), "{msg:?}");
            }
        }
        let msg = hello(Direction::Down, 0xab, &mut buf);
        assert_eq!(
            msg,
            b"tinyproto/duplex down 000000000000000000000000000000ab".as_slice()
        );
        assert_eq!(msg.len(), HELLO_MAX_LEN);
        for stranger in [
            &b""[..],
            b"hello",
            b"tinyproto/duplex",
            b"tinyproto/duplex sideways 00000000000000000000000000000000",
            b"tinyproto/duplex up 123",
            b"tinyproto/duplex up 0000000000000000000000000000000g",
            b"tinyproto/duplex up 0000000000000000000000000000000A",
            WELCOME,
        ] {
            assert_eq!(parse_hello(stranger), None, "{stranger:?}");
        }
    }
}
