//! Receiving one message: length in, accept or reject, status out, payload in.
//!
//! [`Receiver`] is a sans-IO machine like [`Sender`](crate::Sender): it
//! names the next move and is told what moved. The length field is read into
//! the machine itself ([`Receiver::length_buf`]); the payload is read by the
//! driver straight into the caller's buffer (or chunk by chunk into a small
//! one) at the offset the step names. The machine never asks for more bytes
//! than the message has, so it never reads into the next message.
//!
//! The accept/reject decision is the caller's ([`RecvStep::Decide`]); the
//! usual rule is [`Receiver::decide`].

use crate::error::Error;
use crate::wire::{Phase, Status, LENGTH_FIELD_LEN, MAX_MESSAGE_LEN};

/// Sans-IO state of one incoming message (12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Receiver {
    /// The length field as it arrives.
    length: [u8; LENGTH_FIELD_LEN],
    /// Bytes moved in the current phase: of the length, then of the payload.
    moved: u32,
    state: RecvState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum RecvState {
    #[default]
    Length,
    Decide,
    Accept,
    Reject,
    Payload,
    Delivered,
    Refused,
}

/// What an incoming message needs next from the transport or the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RecvStep {
    /// Read into [`Receiver::length_buf`], then call [`Receiver::read`].
    ReadLength,
    /// The length is in: call [`Receiver::accept`], [`Receiver::reject`] or
    /// [`Receiver::decide`].
    Decide {
        /// The announced payload length (not yet checked against anything).
        len: u32,
    },
    /// Write this status byte, then call [`Receiver::wrote`].
    WriteStatus(Status),
    /// Read payload bytes into the destination from `offset` on, at most
    /// `remaining` of them, then call [`Receiver::read`].
    ReadPayload {
        /// Payload bytes already read.
        offset: u32,
        /// Payload bytes still to read.
        remaining: u32,
    },
    /// The whole message of `len` bytes has arrived.
    Delivered {
        /// The payload length.
        len: u32,
    },
    /// The message was refused with 0x00; no payload follows.
    Refused {
        /// The announced length.
        len: u32,
    },
}

impl Receiver {
    /// Waits for the next message.
    pub const fn new() -> Self {
        Self {
            length: [0; LENGTH_FIELD_LEN],
            moved: 0,
            state: RecvState::Length,
        }
    }

    /// The announced length, once all four bytes are in.
    pub fn announced_len(&self) -> Option<u32> {
        match self.state {
            RecvState::Length => None,
            _ => Some(u32::from_be_bytes(self.length)),
        }
    }

    /// What to do next.
    pub fn step(&self) -> RecvStep {
        let len = u32::from_be_bytes(self.length);
        match self.state {
            RecvState::Length => RecvStep::ReadLength,
            RecvState::Decide => RecvStep::Decide { len },
            RecvState::Accept => RecvStep::WriteStatus(Status::Ok),
            RecvState::Reject => RecvStep::WriteStatus(Status::GenericError),
            RecvState::Payload => RecvStep::ReadPayload {
                offset: self.moved,
                remaining: len - self.moved,
            },
            RecvState::Delivered => RecvStep::Delivered { len },
            RecvState::Refused => RecvStep::Refused { len },
        }
    }

    /// Where the rest of the length field goes (empty outside
    /// [`RecvStep::ReadLength`]).
    pub fn length_buf(&mut self) -> &mut [u8] {
        match self.state {
            RecvState::Length => self
                .length
                .get_mut(self.moved as usize..)
                .unwrap_or(&mut []),
            _ => &mut [],
        }
    }

    /// Reports that `n` bytes were read in the current read step: into
    /// [`length_buf`](Self::length_buf), or payload bytes into the
    /// destination. Counts beyond what the step asked for are capped; outside
    /// a read step this does nothing.
    pub fn read(&mut self, n: usize) {
        let (owed, next) = match self.state {
            RecvState::Length => (LENGTH_FIELD_LEN as u32, RecvState::Decide),
            RecvState::Payload => (u32::from_be_bytes(self.length), RecvState::Delivered),
            _ => return,
        };
        if crate::advance(&mut self.moved, n, owed) {
            self.state = next;
        }
    }

    /// Feeds length bytes from a buffer the caller already holds (a
    /// superloop's receive ring, a fuzzer's input). Returns how many were
    /// consumed: never more than the length field still lacks.
    pub fn feed_length(&mut self, input: &[u8]) -> usize {
        let dest = self.length_buf();
        let n = dest.len().min(input.len());
        dest[..n].copy_from_slice(&input[..n]);
        self.read(n);
        n
    }

    /// Accepts the announced length, unless it exceeds [`MAX_MESSAGE_LEN`]
    /// (that is always rejected). Does nothing outside [`RecvStep::Decide`].
    pub fn accept(&mut self) {
        if self.state == RecvState::Decide {
            self.state = if u32::from_be_bytes(self.length) <= MAX_MESSAGE_LEN {
                RecvState::Accept
            } else {
                RecvState::Reject
            };
        }
    }

    /// Rejects the announced length. Does nothing outside [`RecvStep::Decide`].
    pub fn reject(&mut self) {
        if self.state == RecvState::Decide {
            self.state = RecvState::Reject;
        }
    }

    /// The usual rule: accept when the length is at most `capacity` (and
    /// [`MAX_MESSAGE_LEN`]), reject otherwise. Returns whether it accepted.
    pub fn decide(&mut self, capacity: u32) -> bool {
        if u32::from_be_bytes(self.length) <= capacity {
            self.accept();
        } else {
            self.reject();
        }
        self.state == RecvState::Accept
    }

    /// Reports that `n` bytes of the status step were written.
    pub fn wrote(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.state = match self.state {
            RecvState::Accept if self.length == [0; LENGTH_FIELD_LEN] => RecvState::Delivered,
            RecvState::Accept => RecvState::Payload,
            RecvState::Reject => RecvState::Refused,
            other => other,
        };
    }

    /// True before any byte of this message arrived: waiting for a message
    /// can be abandoned without a trace on the wire.
    pub fn is_untouched(&self) -> bool {
        self.state == RecvState::Length && self.moved == 0
    }

    /// The phase the message is in (for errors).
    pub fn phase(&self) -> Phase {
        match self.state {
            RecvState::Length | RecvState::Decide => Phase::Length,
            RecvState::Accept | RecvState::Reject | RecvState::Refused => Phase::Status,
            RecvState::Payload | RecvState::Delivered => Phase::Payload,
        }
    }

    /// The error for a stream that ended now: [`Error::Closed`] between
    /// messages, [`Error::UnexpectedEof`] inside one.
    pub fn eof(&self) -> Error {
        if self.is_untouched() {
            Error::Closed
        } else {
            Error::UnexpectedEof {
                phase: self.phase(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_length(len: u32) -> Receiver {
        let mut rx = Receiver::new();
        assert_eq!(rx.feed_length(&len.to_be_bytes()), 4);
        rx
    }

    #[test]
    fn test_length_byte_by_byte() {
        let mut rx = Receiver::new();
        assert_eq!(rx.step(), RecvStep::ReadLength);
        assert_eq!(rx.eof(), Error::Closed);
        for (i, byte) in [0x00, 0x01, 0x02, 0x03].into_iter().enumerate() {
            assert_eq!(rx.step(), RecvStep::ReadLength);
            assert_eq!(rx.length_buf().len(), 4 - i);
            rx.length_buf()[0] = byte;
            rx.read(1);
            if i < 3 {
                assert_eq!(
                    rx.eof(),
                    Error::UnexpectedEof {
                        phase: Phase::Length
                    }
                );
                assert_eq!(rx.announced_len(), None);
            }
        }
        assert_eq!(rx.step(), RecvStep::Decide { len: 0x0001_0203 });
        assert!(rx.length_buf().is_empty());
    }

    #[test]
    fn test_feed_length_consumes_only_the_field() {
        let mut rx = Receiver::new();
        assert_eq!(rx.feed_length(&[0, 0]), 2);
        assert_eq!(rx.feed_length(&[0, 5, 0xAA, 0xBB]), 2);
        assert_eq!(rx.feed_length(&[1]), 0);
        assert_eq!(rx.step(), RecvStep::Decide { len: 5 });
    }

    #[test]
    fn test_accept_then_payload_then_delivered() {
        let mut rx = with_length(3);
        assert!(rx.decide(3));
        assert_eq!(rx.step(), RecvStep::WriteStatus(Status::Ok));
        rx.wrote(0);
        assert_eq!(rx.step(), RecvStep::WriteStatus(Status::Ok));
        rx.wrote(1);
        assert_eq!(
            rx.step(),
            RecvStep::ReadPayload {
                offset: 0,
                remaining: 3
            }
        );
        rx.read(2);
        assert_eq!(
            rx.step(),
            RecvStep::ReadPayload {
                offset: 2,
                remaining: 1
            }
        );
        assert_eq!(
            rx.eof(),
            Error::UnexpectedEof {
                phase: Phase::Payload
            }
        );
        rx.read(9);
        assert_eq!(rx.step(), RecvStep::Delivered { len: 3 });
    }

    #[test]
    fn test_empty_message_is_delivered_after_status() {
        let mut rx = with_length(0);
        assert!(rx.decide(0));
        rx.wrote(1);
        assert_eq!(rx.step(), RecvStep::Delivered { len: 0 });
    }

    #[test]
    fn test_reject_then_refused() {
        let mut rx = with_length(10);
        assert!(!rx.decide(9));
        assert_eq!(rx.step(), RecvStep::WriteStatus(Status::GenericError));
        assert_eq!(
            rx.eof(),
            Error::UnexpectedEof {
                phase: Phase::Status
            }
        );
        rx.wrote(1);
        assert_eq!(rx.step(), RecvStep::Refused { len: 10 });
    }

    #[test]
    fn test_accept_over_max_is_rejected() {
        let mut rx = with_length(MAX_MESSAGE_LEN + 1);
        rx.accept();
        assert_eq!(rx.step(), RecvStep::WriteStatus(Status::GenericError));
    }

    /// The boundary table: length against a 16-byte capacity.
    #[test]
    fn test_decide_boundaries() {
        let cap = 16u32;
        let cases: [(u32, u32, bool); 9] = [
            (0, cap, true),
            (1, cap, true),
            (16, cap, true),
            (17, cap, false),
            (MAX_MESSAGE_LEN, u32::MAX, true),
            (MAX_MESSAGE_LEN, MAX_MESSAGE_LEN, true),
            (MAX_MESSAGE_LEN, MAX_MESSAGE_LEN - 1, false),
            (MAX_MESSAGE_LEN + 1, u32::MAX, false),
            (0xFFFF_FFFF, u32::MAX, false),
        ];
        for (len, capacity, accepted) in cases {
            let mut rx = with_length(len);
            assert_eq!(
                rx.decide(capacity),
                accepted,
                "len {len} capacity {capacity}"
            );
            let status = if accepted {
                Status::Ok
            } else {
                Status::GenericError
            };
            assert_eq!(rx.step(), RecvStep::WriteStatus(status));
        }
    }

    #[test]
    fn test_calls_out_of_state_do_nothing() {
        let mut rx = Receiver::new();
        rx.accept();
        rx.reject();
        rx.wrote(1);
        assert_eq!(rx.step(), RecvStep::ReadLength);
        let mut rx = with_length(2);
        rx.read(1);
        assert_eq!(rx.step(), RecvStep::Decide { len: 2 });
        assert_eq!(rx.feed_length(&[1, 2]), 0);
    }

    #[test]
    fn test_size() {
        assert_eq!(core::mem::size_of::<Receiver>(), 12);
    }
}
