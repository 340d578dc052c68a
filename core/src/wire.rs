//! Wire constants of the tinyproto protocol, named once.
//!
//! Everything here is a fact of the byte stream (see `PROTOCOL.md`): the
//! status bytes, the size of the length field and the largest length a peer
//! may announce. Nothing in this module does I/O.

/// Largest payload length a message may announce: 4,043,309,055 bytes.
///
/// A receiver answers [`Status::GenericError`] to anything larger. Because of
/// this bound the first byte of a length is never `0xFF`.
pub const MAX_MESSAGE_LEN: u32 = 0xF0FF_FFFF;

/// The largest first byte of a length (`0xF0`, from [`MAX_MESSAGE_LEN`]): a
/// byte from `0x01` to this one where a status is due can only be the start
/// of the peer's own length.
pub const MAX_LENGTH_FIRST_BYTE: u8 = MAX_MESSAGE_LEN.to_be_bytes()[0];

/// Size of the big-endian length field that opens every message.
pub const LENGTH_FIELD_LEN: usize = 4;

/// The rule for a 0x00 where the answer to our length was due, where the
/// transport shows what came with it: followed by exactly the other three
/// bytes of a length (and nothing more: the peer now waits for *our*
/// answer), it is the peer's own length, a conflict. A genuine rejection is
/// followed by nothing, or by the whole length of the peer's next message.
/// The machine reads one byte at a time and cannot see this; adapters with
/// read-ahead or a socket buffer apply it.
pub const fn zero_answer_is_a_length(bytes_behind: usize) -> bool {
    bytes_behind == LENGTH_FIELD_LEN - 1
}

/// The byte each side sends right after the TCP connection is up.
pub const GREETING: u8 = Status::Ok as u8;

/// The single byte a server at its connection limit writes instead of the
/// greeting, before it closes.
pub const CONNECTION_LIMIT_REFUSAL: [u8; 1] = [Status::ConnectionLimit as u8];

/// A one-byte status, as sent in the greeting and in answer to a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Status {
    /// Greeting accepted, or message length accepted: the payload may follow.
    Ok = 0xFF,
    /// Rejected: the length is over the limit or the receiver cannot take it.
    GenericError = 0x00,
    /// The server is at its connection limit (sent instead of the greeting).
    ConnectionLimit = 0xFE,
    /// Reserved by the reference implementation; never sent by it.
    Conflict = 0xFD,
}

impl Status {
    /// The byte that carries this status on the wire.
    pub const fn to_byte(self) -> u8 {
        self as u8
    }

    /// The status a byte stands for, or `None` for a byte that is no status.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0xFF => Some(Self::Ok),
            0x00 => Some(Self::GenericError),
            0xFE => Some(Self::ConnectionLimit),
            0xFD => Some(Self::Conflict),
            _ => None,
        }
    }
}

impl From<Status> for u8 {
    fn from(status: Status) -> u8 {
        status.to_byte()
    }
}

impl TryFrom<u8> for Status {
    type Error = u8;

    /// Hands the byte back when it is no status.
    fn try_from(byte: u8) -> Result<Self, u8> {
        Self::from_byte(byte).ok_or(byte)
    }
}

/// The point of an exchange at which something happened (used in errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Phase {
    /// The one-byte greeting at the start of a connection.
    Greeting,
    /// The four-byte length that opens a message.
    Length,
    /// The one-byte answer to a length.
    Status,
    /// The payload of an accepted message.
    Payload,
}

impl core::fmt::Display for Phase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Phase::Greeting => "greeting",
            Phase::Length => "length",
            Phase::Status => "status",
            Phase::Payload => "payload",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_status_bytes_round_trip() {
        for byte in 0..=255u8 {
            match Status::from_byte(byte) {
                Some(status) => assert_eq!(status.to_byte(), byte),
                None => assert!(![0xFF, 0x00, 0xFE, 0xFD].contains(&byte)),
            }
        }
        assert_eq!(Status::try_from(0x42), Err(0x42));
        assert_eq!(u8::from(Status::ConnectionLimit), 0xFE);
        assert_eq!(GREETING, 0xFF);
    }

    #[test]
    fn test_a_zero_answer_is_a_length_with_exactly_three_bytes_behind() {
        let verdicts: [bool; 6] = core::array::from_fn(zero_answer_is_a_length);
        assert_eq!(verdicts, [false, false, false, true, false, false]);
    }

    #[test]
    fn test_max_len_first_byte_is_never_ff() {
        assert_eq!(MAX_LENGTH_FIRST_BYTE, 0xF0);
        assert_eq!(MAX_MESSAGE_LEN, 4_043_309_055);
    }
}
