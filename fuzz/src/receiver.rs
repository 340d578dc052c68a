//! Target `receiver`: arbitrary bytes from the peer, arbitrarily split, into
//! the receive side — the sans-IO machines, the blocking driver's whole
//! message `receive`, or its chunked `begin_receive` — with arbitrary
//! capacities and limits.
//!
//! Input layout (so seeds are wire bytes behind a short header):
//!
//! | bytes | meaning |
//! |---|---|
//! | 1 | mode: `% 3` = 0 machines, 1 `receive`, 2 `begin_receive`; bit 2 picks the machine's decision method |
//! | 4 | capacity, big-endian (buffer length, capped at 64 KiB for `receive`; `begin_receive` limit) |
//! | 4 | `set_max_message_len` value, big-endian (a cap for `receive` and the machines; `begin_receive` must ignore it) |
//! | 1 + n | n, then n plan bytes (see [`crate::script::decode`]) |
//! | rest | the peer's byte stream, greeting first |
//!
//! Asserts: no panic; the status bytes written are the greeting then 0xFF
//! iff `len <= min(capacity, limit, MAX_MESSAGE_LEN)` else 0x00; a delivered
//! message is exactly the announced bytes of the input; the driver never
//! reads past the message it is on; every outcome (message, `TooLarge`,
//! `Closed`, `UnexpectedEof`, greeting errors) is the reference decoder's.

use core::ops::Range;

use arbitrary::Unstructured;
use tinyproto::{
    blocking::Connection, Greeting, GreetingStep, Phase, Receiver, RecvStep, MAX_MESSAGE_LEN,
};

use crate::script::{receive_chunked, retry, sizes, Plan, Script};
use crate::Error;

/// Largest buffer the whole-message mode allocates.
const MAX_BUFFER: u32 = 1 << 16;

/// One expected outcome of a receive call: the message's range in the input
/// or the error, and how far the input has been consumed afterwards.
type Outcome = (Result<Range<usize>, Error>, usize);

/// The reference decoder: what a correct receiver does with `data` when it
/// can take at most `cap` bytes. Returns the outcome of each successive
/// receive call (the last one is the error that ends the stream) and the
/// bytes the receiver writes.
pub fn reference(data: &[u8], cap: u32) -> (Vec<Outcome>, Vec<u8>) {
    let cap = cap.min(MAX_MESSAGE_LEN);
    let mut written = vec![0xFF];
    let mut out = Vec::new();
    let greeting_error = match data.first() {
        None => Some(Error::UnexpectedEof {
            phase: Phase::Greeting,
        }),
        Some(0xFF) => None,
        Some(0xFE) => Some(Error::ConnectionLimit),
        Some(&byte) => Some(Error::UnexpectedByte {
            phase: Phase::Greeting,
            byte,
        }),
    };
    if let Some(e) = greeting_error {
        out.push((Err(e), data.len().min(1)));
        return (out, written);
    }
    let mut pos = 1;
    loop {
        let rest = data.len() - pos;
        if rest == 0 {
            out.push((Err(Error::Closed), pos));
            break;
        }
        if rest < 4 {
            out.push((
                Err(Error::UnexpectedEof {
                    phase: Phase::Length,
                }),
                data.len(),
            ));
            break;
        }
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap());
        pos += 4;
        if len > cap {
            written.push(0x00);
            out.push((Err(Error::TooLarge { len, capacity: cap }), pos));
            continue;
        }
        written.push(0xFF);
        let len = len as usize;
        if data.len() - pos < len {
            out.push((
                Err(Error::UnexpectedEof {
                    phase: Phase::Payload,
                }),
                data.len(),
            ));
            break;
        }
        out.push((Ok(pos..pos + len), pos + len));
        pos += len;
    }
    (out, written)
}

/// Runs one fuzz input.
pub fn run(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let (Ok(mode), Ok(capacity), Ok(max_len), Ok(plan_len)) = (
        u.bytes(1).map(|b| b[0]),
        u.bytes(4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap())),
        u.bytes(4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap())),
        u.bytes(1).map(|b| usize::from(b[0])),
    ) else {
        return;
    };
    let Ok(plan) = u.bytes(plan_len) else {
        return;
    };
    let data = u.take_rest();
    match mode % 3 {
        0 => machines(data, capacity.min(max_len), mode & 4 != 0, plan),
        1 => whole(data, capacity.min(MAX_BUFFER), max_len, plan),
        _ => chunked(data, capacity, max_len, plan),
    }
}

/// The sans-IO machines driven by hand over the input.
fn machines(data: &[u8], cap: u32, manual_decision: bool, plan: &[u8]) {
    let (expected, expected_written) = reference(data, cap);
    let mut next_size = sizes(plan);
    let mut written = Vec::new();
    let mut pos = 0;
    let mut got: Vec<Outcome> = Vec::new();

    let mut greeting = Greeting::new();
    let greeted = loop {
        match greeting.step() {
            GreetingStep::Write(bytes) => {
                assert_eq!(bytes, [0xFF]);
                greeting.wrote(0);
                assert_eq!(greeting.step(), GreetingStep::Write(&[0xFF]));
                written.push(bytes[0]);
                greeting.wrote(1);
            }
            GreetingStep::Read => {
                let Some(&byte) = data.get(pos) else {
                    break Err(greeting.eof().into_io());
                };
                pos += 1;
                if let Err(e) = greeting.received(byte) {
                    break Err(e.into_io());
                }
            }
            GreetingStep::Done => break Ok(()),
        }
    };
    if let Err(e) = greeted {
        got.push((Err(e), pos));
    }

    while got.last().is_none_or(|(r, _)| !is_final(r)) {
        let mut rx = Receiver::new();
        let mut delivered: Vec<u8> = Vec::new();
        let mut length = [0u8; 4];
        let mut length_got = 0;
        let outcome = loop {
            match rx.step() {
                RecvStep::ReadLength => {
                    let avail = &data[pos..];
                    if avail.is_empty() {
                        break Err(rx.eof().into_io());
                    }
                    let n = next_size().min(avail.len());
                    let took = if n.is_multiple_of(2) {
                        rx.feed_length(&avail[..n])
                    } else {
                        let dest = rx.length_buf();
                        let k = dest.len().min(n);
                        dest[..k].copy_from_slice(&avail[..k]);
                        rx.read(k);
                        k
                    };
                    assert!(took >= 1 && length_got + took <= 4, "length over-read");
                    length[length_got..length_got + took].copy_from_slice(&avail[..took]);
                    length_got += took;
                    pos += took;
                }
                RecvStep::Decide { len } => {
                    assert_eq!(length_got, 4);
                    assert_eq!(len, u32::from_be_bytes(length));
                    assert_eq!(rx.announced_len(), Some(len));
                    if manual_decision {
                        if len <= cap {
                            rx.accept();
                        } else {
                            rx.reject();
                        }
                    } else {
                        rx.decide(cap);
                    }
                }
                RecvStep::WriteStatus(status) => {
                    rx.wrote(0);
                    assert_eq!(rx.step(), RecvStep::WriteStatus(status));
                    written.push(status.to_byte());
                    rx.wrote(1);
                }
                RecvStep::ReadPayload { offset, remaining } => {
                    let len = u32::from_be_bytes(length);
                    assert_eq!(offset as usize, delivered.len());
                    assert_eq!(u64::from(offset) + u64::from(remaining), u64::from(len));
                    assert!(remaining > 0);
                    let avail = &data[pos..];
                    if avail.is_empty() {
                        break Err(rx.eof().into_io());
                    }
                    let n = next_size().min(avail.len()).min(remaining as usize);
                    delivered.extend_from_slice(&avail[..n]);
                    rx.read(n);
                    pos += n;
                }
                RecvStep::Delivered { len } => {
                    assert_eq!(len as usize, delivered.len());
                    assert_eq!(delivered, data[pos - delivered.len()..pos]);
                    break Ok(pos - delivered.len()..pos);
                }
                RecvStep::Refused { len } => {
                    break Err(Error::TooLarge {
                        len,
                        capacity: cap.min(MAX_MESSAGE_LEN),
                    });
                }
            }
        };
        got.push((outcome, pos));
    }
    assert_eq!(got, expected);
    assert_eq!(written, expected_written);
}

/// True for an outcome after which the stream carries nothing more.
fn is_final(r: &Result<Range<usize>, Error>) -> bool {
    matches!(r, Err(e) if !e.is_recoverable())
}

/// The blocking driver's whole-message `receive`, over a scripted transport.
fn whole(data: &[u8], buf_len: u32, max_len: u32, plan: &[u8]) {
    let mut conn = Connection::new(Script::new(data, Plan::new(plan, true)));
    conn.set_max_message_len(max_len);
    let cap = buf_len.min(conn.max_message_len());
    let (expected, expected_written) = reference(data, cap);
    let mut buf = vec![0u8; buf_len as usize];
    for (want, consumed) in &expected {
        let got = retry(|| conn.receive(&mut buf).map(<[u8]>::to_vec));
        let want = want.clone().map(|r| data[r].to_vec());
        assert_eq!(got, want);
        assert_eq!(
            conn.get_ref().consumed(),
            *consumed,
            "read past the message"
        );
        assert!(!conn.is_in_progress());
    }
    assert!(conn.is_broken());
    assert_eq!(conn.receive(&mut buf), Err(Error::Broken));
    assert_eq!(conn.get_ref().written, expected_written);
}

/// The blocking driver's chunked `begin_receive`, reading through small
/// buffers; a stall mid-payload either retries the read or drops the reader
/// and calls `begin_receive` again (both must resume).
fn chunked(data: &[u8], limit: u32, max_len: u32, plan: &[u8]) {
    let mut conn = Connection::new(Script::new(data, Plan::new(plan, true)));
    // The cap is on whole messages: a chunked receive takes its own limit,
    // within the protocol's.
    conn.set_max_message_len(max_len);
    let cap = limit.min(tinyproto::MAX_MESSAGE_LEN);
    let (expected, expected_written) = reference(data, cap);
    let mut next_size = sizes(plan);
    for (want, consumed) in &expected {
        let outcome = receive_chunked(&mut conn, limit, &mut next_size);
        let want = want.clone().map(|r| data[r].to_vec());
        assert_eq!(outcome, want);
        assert_eq!(
            conn.get_ref().consumed(),
            *consumed,
            "read past the message"
        );
    }
    assert!(conn.is_broken());
    assert_eq!(conn.get_ref().written, expected_written);
}
