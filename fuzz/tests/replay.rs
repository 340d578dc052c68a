//! Replays the committed seed corpus (and any other corpus or artifact file
//! present) through the harnesses on a stable toolchain, and checks a few
//! hand-built scenarios so the harnesses themselves are known to accept
//! correct behaviour.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        eprintln!("{}", path.display());
        run(&data);
        n += 1;
    }
    n
}

#[test]
fn test_replay_receiver_corpus() {
    assert!(replay("receiver", tinyproto_fuzz::receiver::run) > 0);
}

#[test]
fn test_replay_roundtrip_corpus() {
    assert!(replay("roundtrip", tinyproto_fuzz::roundtrip::run) > 0);
}

#[test]
fn test_replay_session_corpus() {
    assert!(replay("session", tinyproto_fuzz::session::run) > 0);
}

mod roundtrip {
    use tinyproto_fuzz::roundtrip::{check, Input, Message};

    fn msg(payload: &[u8], rejected: bool, chunked: bool) -> Message {
        Message {
            payload: payload.to_vec(),
            rejected,
            chunked_send: chunked,
            chunked_receive: !chunked,
            slack: 3,
        }
    }

    #[test]
    fn test_mixed_messages_whole_and_bytewise() {
        let messages = || {
            vec![
                msg(b"hello", false, false),
                msg(b"", true, true),
                msg(b"rejected", true, false),
                msg(&[0xFF; 300], false, true),
                msg(b"after", false, false),
            ]
        };
        check(&Input {
            send_plan: vec![],
            receive_plan: vec![],
            messages: messages(),
        });
        // One byte per call, with stalls in between.
        check(&Input {
            send_plan: vec![0x00, 0xF0, 0x01, 0xFF],
            receive_plan: vec![0xFF, 0x00, 0x02, 0xF7],
            messages: messages(),
        });
    }
}

mod session {
    use tinyproto_fuzz::session::{check, Input, Op};

    fn tx(payload: &[u8], accept: bool) -> Op {
        Op::Transmit {
            payload: payload.to_vec(),
            accept,
        }
    }

    fn rx(payload: &[u8], capacity: u8) -> Op {
        Op::Receive {
            payload: payload.to_vec(),
            capacity,
        }
    }

    fn session(greeting: u8, plan: &[u8], ops: Vec<Op>) {
        check(&Input {
            greeting,
            max_len: None,
            plan: plan.to_vec(),
            ops,
        });
    }

    #[test]
    fn test_echo_with_rejections() {
        let ops = vec![
            tx(b"hello", true),
            rx(b"hello", 5),
            tx(b"no", false),
            rx(b"too long", 4),
            rx(b"", 0),
            tx(b"", true),
        ];
        session(0, &[], ops.clone());
        session(0, &[0x80, 0x00, 0x81, 0x7F], ops);
    }

    #[test]
    fn test_collision_is_a_conflict_then_broken() {
        // The peer starts its own message where our status is due: every
        // first byte a length can have but 0x00, byte by byte or at once,
        // with a cancel and a stall on the way.
        for first in [0u8, 0x41, 0xEF] {
            let ops = vec![
                tx(b"before", true),
                Op::Cancel { polls: 3 },
                Op::Stall { after: 2 },
                Op::Collide {
                    payload: b"crossed".to_vec(),
                    first,
                },
                tx(b"after", true),
                rx(b"never", 8),
            ];
            session(0, &[], ops.clone());
            session(0, &[0x80, 0x00, 0x81], ops);
        }
    }

    #[test]
    fn test_stall_and_cancel_resume() {
        let mut ops = Vec::new();
        for polls in 0..12 {
            ops.push(Op::Cancel { polls });
            ops.push(tx(b"cancelled transmit", true));
            ops.push(Op::Stall { after: polls });
            ops.push(Op::Cancel { polls });
            ops.push(rx(b"cancelled receive", 200));
        }
        session(0, &[0x80, 0x81, 0x00, 0x82], ops);
    }

    #[test]
    fn test_close_at_every_byte() {
        // Greeting (1) + length (4) + payload (5): close after each.
        for after in 0..=11 {
            session(
                0,
                &[0x80, 0x01],
                vec![Op::Close { after }, rx(b"hello", 16), rx(b"next", 16)],
            );
            session(
                0,
                &[],
                vec![Op::Close { after }, tx(b"hello", true), tx(b"x", true)],
            );
        }
    }

    #[test]
    fn test_greeting_refused() {
        session(0xFE, &[], vec![tx(b"hello", true), rx(b"x", 1)]);
        session(0xF3, &[], vec![rx(b"x", 1)]);
    }
}
