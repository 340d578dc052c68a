//! Target `receiver`: arbitrary bytes from the peer, arbitrarily split, into
//! the receive side — the sans-IO `Machine` driven by hand (with wrong
//! reports mixed in), the blocking driver's whole message `receive`, or its
//! chunked `begin_receive` — with arbitrary capacities and limits.
//!
//! Input layout (so seeds are wire bytes behind a short header):
//!
//! | bytes | meaning |
//! |---|---|
//! | 1 | mode: `% 3` = 0 the sans-IO `Machine`, 1 `receive`, 2 `begin_receive`; in mode 0, bit 2 decides by hand (`next_length`, then `receive` or `reject`) |
//! | 4 | capacity, big-endian (buffer length, capped at 64 KiB for whole receives; `begin_receive` limit) |
//! | 4 | `set_max_message_len` value, big-endian (a cap for whole receives; `begin_receive` must ignore it) |
//! | 1 + n | n, then n plan bytes (see [`crate::script::decode`]) |
//! | rest | the peer's byte stream, greeting first |
//!
//! Asserts: no panic; a wrong report to `Machine::moved` is
//! `Misuse::WrongReport` and leaves the machine as it was; the status bytes
//! written are the greeting then 0xFF iff `len <= min(capacity, limit, MAX_MESSAGE_LEN)` else 0x00; a delivered
//! message is exactly the announced bytes of the input; the driver never
//! reads past the message it is on; every outcome (message, `TooLarge`,
//! `Closed`, `UnexpectedEof`, greeting errors) is the reference decoder's.

use core::ops::Range;

use arbitrary::Unstructured;
use tinyproto::{blocking::Connection, Io, Machine, Misuse, Moved, Phase, Step, MAX_MESSAGE_LEN};

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
        0 => sans_io(data, capacity.min(MAX_BUFFER), max_len, mode & 4 != 0, plan),
        1 => whole(data, capacity.min(MAX_BUFFER), max_len, plan),
        _ => chunked(data, capacity, max_len, plan),
    }
}

/// The sans-IO [`Machine`] driven by hand over the input, as a superloop
/// drives it: each read moves what the plan says, some steps are left
/// unreported (a transport with nothing to give yet), and before some
/// reports a wrong one is told first (another kind, one byte more than
/// asked, a flush nobody asked for). A wrong report must be
/// [`Misuse::WrongReport`] and change nothing.
fn sans_io(data: &[u8], capacity: u32, max_len: u32, manual_decision: bool, plan: &[u8]) {
    let mut machine = Machine::new();
    machine.set_max_message_len(max_len);
    let cap = machine.whole_capacity(capacity as usize);
    let (expected, expected_written) = reference(data, cap);
    let mut buf = vec![0u8; capacity as usize];
    let mut next_size = sizes(plan);
    let mut written = Vec::new();
    let mut pos = 0;
    let mut got: Vec<Outcome> = Vec::new();
    let mut idle = false;
    let mut steps = 0usize;
    while got.last().is_none_or(|(r, _)| !is_final(r)) {
        steps += 1;
        assert!(steps < crate::MAX_RETRIES, "no progress");
        // Next step: the announced length first when deciding by hand.
        let step = if manual_decision && !machine.is_in_progress() {
            match machine.next_length() {
                Step::Done(Ok(len)) if len <= cap => machine.receive(&mut buf),
                Step::Done(Ok(len)) => match machine.reject() {
                    Step::Done(Ok(refused)) => {
                        assert_eq!(refused, len);
                        got.push((Err(Error::TooLarge { len, capacity: cap }), pos));
                        continue;
                    }
                    Step::Done(Err(e)) => panic!("reject failed: {e:?}"),
                    step => as_receive_step(step),
                },
                step => as_receive_step(step),
            }
        } else {
            machine.receive(&mut buf)
        };
        let size = next_size();
        // A transport with nothing to move this pass: no report (never twice in a row).
        let stall = size % 5 == 0 && !idle;
        idle = stall;
        let (moved, wrong) = match step {
            Step::Done(result) => {
                let outcome = result
                    .map(|len| pos - len..pos)
                    .map_err(tinyproto::Error::widen);
                if let Ok(range) = &outcome {
                    // Delivered: exactly the bytes the peer sent, nothing more.
                    assert_eq!(buf[..range.len()], data[range.clone()]);
                }
                got.push((outcome, pos));
                continue;
            }
            Step::Io(_) if stall => continue,
            Step::Io(Io::Write(bytes)) => {
                let n = bytes.len().min(size);
                written.extend_from_slice(&bytes[..n]);
                let wrong = [Moved::Read(1), Moved::Wrote(bytes.len() + 1)];
                (Moved::Wrote(n), wrong)
            }
            Step::Io(Io::Read(dest)) => {
                let n = dest.len().min(size).min(data.len() - pos);
                dest[..n].copy_from_slice(&data[pos..pos + n]);
                pos += n;
                let wrong = [Moved::Wrote(1), Moved::Read(dest.len() + 1)];
                (Moved::Read(n), wrong)
            }
            Step::Io(Io::Flush) => (Moved::Flushed, [Moved::Read(1), Moved::Wrote(1)]),
        };
        if size % 3 == 0 {
            let before = machine.clone();
            let wrong = wrong[size % 2];
            assert_eq!(
                machine.moved(wrong),
                Err(tinyproto::Error::Misuse(Misuse::WrongReport)),
                "{wrong:?} instead of {moved:?}"
            );
            assert_eq!(machine, before, "a wrong report changed the machine");
        }
        if let Err(e) = machine.moved(moved) {
            got.push((Err(e.widen()), pos));
        }
    }
    assert_eq!(got, expected);
    assert_eq!(written, expected_written);
    assert!(machine.is_broken());
    assert_eq!(
        machine.receive(&mut buf),
        Step::Done(Err(tinyproto::Error::Broken))
    );
}

/// A step of `next_length` or `reject` as a step of `receive` (their
/// results never reach here: only their I/O does).
fn as_receive_step(step: Step<'_, u32>) -> Step<'_, usize> {
    match step {
        Step::Io(io) => Step::Io(io),
        Step::Done(result) => Step::Done(result.map(|len| len as usize)),
    }
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
