//! Sending one message: length out, status in, payload out.
//!
//! [`Sender`] is a sans-IO machine: it says what to move next
//! ([`Sender::step`]) and is told what actually moved. Progress is counted to
//! the byte, so a send can stop at any byte and resume later. The payload never
//! passes through the machine: the driver writes it straight from the caller's
//! buffer at the offset the step names.

use crate::error::Error;
use crate::wire::{Phase, Status, LENGTH_FIELD_LEN, MAX_MESSAGE_LEN};

/// Sans-IO state of one outgoing message (12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Sender {
    /// The length field as it goes on the wire.
    length: [u8; LENGTH_FIELD_LEN],
    /// Bytes moved in the current phase: of the length, then of the payload.
    moved: u32,
    state: SendState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum SendState {
    Length,
    Status,
    Payload,
    Delivered,
    Rejected,
}

/// What an outgoing message needs next from the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SendStep<'a> {
    /// Write these bytes of the length field, then call [`Sender::wrote`].
    WriteLength(&'a [u8]),
    /// Read the one status byte and hand it to [`Sender::received_status`].
    ReadStatus,
    /// Write payload bytes from `offset` on (`remaining` are still owed), then
    /// call [`Sender::wrote`].
    WritePayload {
        /// Payload bytes already written.
        offset: u32,
        /// Payload bytes still to write.
        remaining: u32,
    },
    /// Every byte is written: the message is delivered.
    Delivered,
    /// The peer answered 0x00; nothing of the payload was sent.
    Rejected,
}

impl Sender {
    /// Starts a message of `len` payload bytes.
    ///
    /// Fails with [`Error::TooLarge`] above [`MAX_MESSAGE_LEN`].
    pub fn new(len: u32) -> Result<Self, Error> {
        if len <= MAX_MESSAGE_LEN {
            Ok(Self {
                length: len.to_be_bytes(),
                moved: 0,
                state: SendState::Length,
            })
        } else {
            Err(Error::TooLarge {
                len,
                capacity: MAX_MESSAGE_LEN,
            })
        }
    }

    /// The payload length of this message.
    pub fn len(&self) -> u32 {
        u32::from_be_bytes(self.length)
    }

    /// True for an empty (zero-length) message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What to do next.
    pub fn step(&self) -> SendStep<'_> {
        match self.state {
            SendState::Length => {
                SendStep::WriteLength(self.length.get(self.moved as usize..).unwrap_or(&[]))
            }
            SendState::Status => SendStep::ReadStatus,
            SendState::Payload => SendStep::WritePayload {
                offset: self.moved,
                remaining: self.len() - self.moved,
            },
            SendState::Delivered => SendStep::Delivered,
            SendState::Rejected => SendStep::Rejected,
        }
    }

    /// Reports that `n` bytes of the current write step left. Counts beyond
    /// what the step asked for are capped; outside a write step this does
    /// nothing.
    pub fn wrote(&mut self, n: usize) {
        let (owed, next) = match self.state {
            SendState::Length => (LENGTH_FIELD_LEN as u32, SendState::Status),
            SendState::Payload => (self.len(), SendState::Delivered),
            _ => return,
        };
        if crate::advance(&mut self.moved, n, owed) {
            self.state = next;
        }
    }

    /// Hands over the status byte the peer answered to our length.
    ///
    /// 0xFF lets the payload go (an empty message is then delivered); 0x00
    /// means [`SendStep::Rejected`]; anything else, or a byte when no status
    /// is due, is [`Error::UnexpectedByte`] and the connection is out of step.
    pub fn received_status(&mut self, byte: u8) -> Result<(), Error> {
        if self.state != SendState::Status {
            return Err(Error::UnexpectedByte {
                phase: self.phase(),
                byte,
            });
        }
        match Status::from_byte(byte) {
            Some(Status::Ok) => {
                self.state = if self.is_empty() {
                    SendState::Delivered
                } else {
                    SendState::Payload
                };
                Ok(())
            }
            Some(Status::GenericError) => {
                self.state = SendState::Rejected;
                Ok(())
            }
            _ => Err(Error::UnexpectedByte {
                phase: Phase::Status,
                byte,
            }),
        }
    }

    /// True before any byte has left: the message can be dropped without a
    /// trace on the wire.
    pub fn is_untouched(&self) -> bool {
        self.state == SendState::Length && self.moved == 0
    }

    /// True once the message is delivered or rejected.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, SendState::Delivered | SendState::Rejected)
    }

    /// The phase the message is in (for errors).
    pub fn phase(&self) -> Phase {
        match self.state {
            SendState::Length => Phase::Length,
            SendState::Status | SendState::Rejected => Phase::Status,
            SendState::Payload | SendState::Delivered => Phase::Payload,
        }
    }

    /// The error for a stream that ended, or took no more bytes, now.
    pub fn eof(&self) -> Error {
        Error::UnexpectedEof {
            phase: self.phase(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(len: u32) -> Sender {
        let mut tx = Sender::new(len).unwrap();
        tx.wrote(4);
        tx.received_status(0xFF).unwrap();
        tx
    }

    #[test]
    fn test_length_is_big_endian_and_resumable() {
        let mut tx = Sender::new(0x0102_0304).unwrap();
        assert_eq!(tx.step(), SendStep::WriteLength(&[1, 2, 3, 4]));
        tx.wrote(1);
        assert_eq!(tx.step(), SendStep::WriteLength(&[2, 3, 4]));
        tx.wrote(0);
        assert_eq!(tx.step(), SendStep::WriteLength(&[2, 3, 4]));
        tx.wrote(2);
        assert_eq!(tx.step(), SendStep::WriteLength(&[4]));
        assert!(!tx.is_untouched());
        tx.wrote(1);
        assert_eq!(tx.step(), SendStep::ReadStatus);
    }

    #[test]
    fn test_length_wrote_too_much_is_capped() {
        let mut tx = Sender::new(7).unwrap();
        tx.wrote(usize::MAX);
        assert_eq!(tx.step(), SendStep::ReadStatus);
    }

    #[test]
    fn test_status_ok_then_payload_byte_by_byte() {
        let mut tx = accepted(3);
        assert_eq!(
            tx.step(),
            SendStep::WritePayload {
                offset: 0,
                remaining: 3
            }
        );
        tx.wrote(1);
        assert_eq!(
            tx.step(),
            SendStep::WritePayload {
                offset: 1,
                remaining: 2
            }
        );
        tx.wrote(1);
        tx.wrote(1);
        assert_eq!(tx.step(), SendStep::Delivered);
        tx.wrote(5);
        assert_eq!(
            tx.step(),
            SendStep::Delivered,
            "writes after the end do nothing"
        );
    }

    #[test]
    fn test_status_ok_on_empty_message_delivers() {
        let tx = accepted(0);
        assert_eq!(tx.step(), SendStep::Delivered);
    }

    #[test]
    fn test_status_reject() {
        let mut tx = Sender::new(10).unwrap();
        tx.wrote(4);
        assert_eq!(tx.received_status(0x00), Ok(()));
        assert_eq!(tx.step(), SendStep::Rejected);
    }

    #[test]
    fn test_status_conflict_bytes() {
        for byte in [0xFE, 0xFD, 0x01, 0x80] {
            let mut tx = Sender::new(10).unwrap();
            tx.wrote(4);
            assert_eq!(
                tx.received_status(byte),
                Err(Error::UnexpectedByte {
                    phase: Phase::Status,
                    byte
                })
            );
        }
    }

    #[test]
    fn test_status_before_length_written_is_unexpected() {
        let mut tx = Sender::new(10).unwrap();
        tx.wrote(2);
        assert_eq!(
            tx.received_status(0xFF),
            Err(Error::UnexpectedByte {
                phase: Phase::Length,
                byte: 0xFF
            })
        );
        assert_eq!(
            tx.eof(),
            Error::UnexpectedEof {
                phase: Phase::Length
            }
        );
    }

    #[test]
    fn test_length_boundaries() {
        assert!(Sender::new(0).is_ok());
        assert_eq!(Sender::new(MAX_MESSAGE_LEN).unwrap().len(), MAX_MESSAGE_LEN);
        let over = MAX_MESSAGE_LEN + 1;
        assert_eq!(
            Sender::new(over),
            Err(Error::TooLarge {
                len: over,
                capacity: MAX_MESSAGE_LEN
            })
        );
        assert!(Sender::new(0xFFFF_FFFF).is_err());
    }

    #[test]
    fn test_eof_phases() {
        let mut tx = Sender::new(2).unwrap();
        assert_eq!(
            tx.eof(),
            Error::UnexpectedEof {
                phase: Phase::Length
            }
        );
        tx.wrote(4);
        assert_eq!(
            tx.eof(),
            Error::UnexpectedEof {
                phase: Phase::Status
            }
        );
        tx.received_status(0xFF).unwrap();
        assert_eq!(
            tx.eof(),
            Error::UnexpectedEof {
                phase: Phase::Payload
            }
        );
    }

    #[test]
    fn test_size() {
        assert_eq!(core::mem::size_of::<Sender>(), 12);
    }
}
