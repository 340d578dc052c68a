//! Target `roundtrip`: arbitrary messages are sent by a blocking
//! `Connection` into a scripted transport whose peer side supplies the
//! greeting and a status for each length (0x00 for the messages marked
//! rejected). The captured bytes are then decoded by a receiving
//! `Connection` through other arbitrary splits, with a capacity that rejects
//! exactly the same messages.
//!
//! Asserts: the sender's results (`Ok` / `Rejected`), the exact bytes on the
//! wire (greeting, big-endian lengths, payload only after 0xFF), the
//! receiver's results (`Ok(message)` / `TooLarge`) and the statuses it
//! writes (which must be what the sender's peer answered), a clean
//! `Closed` at the end, and that neither side reads a byte too many.
//! Whole-message and chunked APIs are mixed per message; transports stall
//! at arbitrary calls and every operation is resumed by calling it again.

use arbitrary::{Arbitrary, Unstructured};
use tinyproto::blocking::Connection;

use crate::script::{receive_chunked, retry, sizes, transmit_chunked, Plan, Script};
use crate::Error;

/// At most this many messages per input.
const MAX_MESSAGES: usize = 32;

/// One message of the exchange.
#[derive(Debug, Arbitrary)]
pub struct Message {
    /// The payload.
    pub payload: Vec<u8>,
    /// The receiver refuses it (it offers one byte less than needed); an
    /// empty message cannot be refused that way and is always accepted.
    pub rejected: bool,
    /// Sent with `begin_transmit` rather than `transmit`.
    pub chunked_send: bool,
    /// Received with `begin_receive` rather than `receive`.
    pub chunked_receive: bool,
    /// Extra capacity the receiver offers beyond the payload.
    pub slack: u8,
}

impl Message {
    fn accepted(&self) -> bool {
        !self.rejected || self.payload.is_empty()
    }

    /// The capacity the receiver offers.
    fn capacity(&self) -> usize {
        if self.accepted() {
            self.payload.len() + usize::from(self.slack)
        } else {
            self.payload.len() - 1
        }
    }
}

/// The whole scenario.
#[derive(Debug, Arbitrary)]
pub struct Input {
    /// Moves of the sender's transport (see [`crate::script::decode`]).
    pub send_plan: Vec<u8>,
    /// Moves of the receiver's transport.
    pub receive_plan: Vec<u8>,
    /// The messages, in order.
    pub messages: Vec<Message>,
}

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        check(&input);
    }
}

/// Checks one scenario.
pub fn check(input: &Input) {
    let messages = &input.messages[..input.messages.len().min(MAX_MESSAGES)];

    // What the sender's peer answers: greeting, then a status per length.
    let mut statuses = vec![0xFF];
    // What must be on the wire from the sender.
    let mut wire = vec![0xFF];
    for m in messages {
        statuses.push(if m.accepted() { 0xFF } else { 0x00 });
        wire.extend_from_slice(&(m.payload.len() as u32).to_be_bytes());
        if m.accepted() {
            wire.extend_from_slice(&m.payload);
        }
    }

    let mut tx = Connection::new(Script::new(&statuses, Plan::new(&input.send_plan, true)));
    assert_eq!(retry(|| tx.greet()), Ok(()));
    let mut next_size = sizes(&input.send_plan);
    for m in messages {
        let got = if m.chunked_send {
            transmit_chunked(&mut tx, &m.payload, &mut next_size)
        } else {
            retry(|| tx.transmit(&m.payload))
        };
        let want = if m.accepted() {
            Ok(())
        } else {
            Err(Error::Rejected {
                len: m.payload.len() as u32,
            })
        };
        assert_eq!(got, want);
        assert!(!tx.is_in_progress());
    }
    let sent = tx.into_inner();
    assert_eq!(sent.written, wire, "bytes on the wire");
    assert_eq!(
        sent.consumed(),
        statuses.len(),
        "sender read a byte too many"
    );

    let mut rx = Connection::new(Script::new(&wire, Plan::new(&input.receive_plan, true)));
    let mut next_size = sizes(&input.receive_plan);
    for m in messages {
        let capacity = m.capacity();
        let got = if m.chunked_receive {
            receive_chunked(&mut rx, capacity as u32, &mut next_size)
        } else {
            let mut buf = vec![0u8; capacity];
            retry(|| rx.receive(&mut buf).map(<[u8]>::to_vec))
        };
        let want = if m.accepted() {
            Ok(m.payload.clone())
        } else {
            Err(Error::TooLarge {
                len: m.payload.len() as u32,
                capacity: capacity as u32,
            })
        };
        assert_eq!(got, want);
        assert!(!rx.is_in_progress());
    }
    let mut buf = [0u8; 1];
    assert_eq!(
        retry(|| rx.receive(&mut buf).map(|_| ())),
        Err(Error::Closed)
    );
    let received = rx.into_inner();
    assert_eq!(
        received.written, statuses,
        "receiver's greeting and statuses"
    );
    assert_eq!(received.consumed(), wire.len());
}
