//! The greeting: one 0xFF each way when a connection comes up.
//!
//! Both ends write first and read second, so two peers never wait on each
//! other. A server at its connection limit writes 0xFE instead and closes;
//! that refusal is [`CONNECTION_LIMIT_REFUSAL`].

use crate::error::Error;
use crate::wire::{Phase, Status, GREETING};

/// The single byte a server at its connection limit writes before closing.
pub const CONNECTION_LIMIT_REFUSAL: [u8; 1] = [Status::ConnectionLimit as u8];

/// Sans-IO state of the greeting, two bytes in size.
///
/// Our byte and the peer's may cross in either order; drivers write first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Greeting {
    sent: bool,
    received: bool,
}

/// What the greeting needs next from the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GreetingStep {
    /// Write these bytes, then report how many went with [`Greeting::wrote`].
    Write(&'static [u8]),
    /// Read one byte and hand it to [`Greeting::received`].
    Read,
    /// The greeting is complete.
    Done,
}

impl Greeting {
    /// A greeting that has not started.
    pub const fn new() -> Self {
        Self {
            sent: false,
            received: false,
        }
    }

    /// What to do next.
    pub fn step(&self) -> GreetingStep {
        if !self.sent {
            GreetingStep::Write(&[GREETING])
        } else if !self.received {
            GreetingStep::Read
        } else {
            GreetingStep::Done
        }
    }

    /// Reports that `n` bytes of [`GreetingStep::Write`] were written.
    pub fn wrote(&mut self, n: usize) {
        self.sent |= n > 0;
    }

    /// Hands over the peer's greeting byte (it may come before ours left).
    ///
    /// 0xFF is the greeting; 0xFE is [`Error::ConnectionLimit`]; any other
    /// byte, or a second byte, is [`Error::UnexpectedByte`].
    pub fn received(&mut self, byte: u8) -> Result<(), Error> {
        match Status::from_byte(byte) {
            Some(Status::Ok) if !self.received => {
                self.received = true;
                Ok(())
            }
            Some(Status::ConnectionLimit) if !self.received => Err(Error::ConnectionLimit),
            _ => Err(Error::UnexpectedByte {
                phase: Phase::Greeting,
                byte,
            }),
        }
    }

    /// True once both greeting bytes have crossed.
    pub fn is_done(&self) -> bool {
        self.sent && self.received
    }

    /// The error for a stream that ended (or took no more bytes) now.
    pub fn eof(&self) -> Error {
        Error::UnexpectedEof {
            phase: Phase::Greeting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_write_then_read_then_done() {
        let mut g = Greeting::new();
        assert_eq!(g.step(), GreetingStep::Write(&[0xFF]));
        g.wrote(0);
        assert_eq!(
            g.step(),
            GreetingStep::Write(&[0xFF]),
            "nothing written, nothing moves"
        );
        g.wrote(1);
        assert_eq!(g.step(), GreetingStep::Read);
        assert!(!g.is_done());
        assert_eq!(g.received(0xFF), Ok(()));
        assert_eq!(g.step(), GreetingStep::Done);
        assert!(g.is_done());
    }

    #[test]
    fn test_read_connection_limit() {
        let mut g = Greeting::new();
        g.wrote(1);
        assert_eq!(g.received(0xFE), Err(Error::ConnectionLimit));
        assert!(!g.is_done());
    }

    #[test]
    fn test_read_other_bytes() {
        for byte in [0x00, 0x01, 0xFD, 0x7F] {
            let mut g = Greeting::new();
            g.wrote(1);
            assert_eq!(
                g.received(byte),
                Err(Error::UnexpectedByte {
                    phase: Phase::Greeting,
                    byte
                })
            );
        }
    }

    #[test]
    fn test_peer_byte_before_ours() {
        let mut g = Greeting::new();
        assert_eq!(g.received(0xFF), Ok(()));
        assert_eq!(g.step(), GreetingStep::Write(&[0xFF]), "ours still owed");
        g.wrote(1);
        assert!(g.is_done());
        assert_eq!(
            g.eof(),
            Error::UnexpectedEof {
                phase: Phase::Greeting
            }
        );
    }

    #[test]
    fn test_second_greeting_byte_is_unexpected() {
        let mut g = Greeting::new();
        g.wrote(1);
        g.received(0xFF).unwrap();
        assert_eq!(
            g.received(0xFF),
            Err(Error::UnexpectedByte {
                phase: Phase::Greeting,
                byte: 0xFF
            })
        );
    }

    #[test]
    fn test_size() {
        assert_eq!(core::mem::size_of::<Greeting>(), 2);
    }
}
