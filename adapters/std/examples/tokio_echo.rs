//! tinyproto on tokio: the core's async driver, `tinyproto::asynch::Connection`,
//! over a tokio `TcpStream` through `embedded-io-adapters` (feature `tokio-1`).
//! The same driver runs on embassy-net in a firmware.
//!
//! An echo server and a client on loopback, both async on one tokio runtime:
//!
//! ```sh
//! cargo run -p tinyproto-std --example tokio_echo
//! ```
//!
//! `cargo test` runs the exchange below as a test.

use std::net::SocketAddr;

use embedded_io_adapters::tokio_1::FromTokio;
use tinyproto::asynch::Connection;
use tokio::net::{TcpListener, TcpStream};

type Error = tinyproto::Error<std::io::Error>;

/// Echoes every message of one connection until the peer closes.
async fn echo_one(listener: TcpListener) -> Result<(), Error> {
    let (stream, _) = listener.accept().await?;
    stream.set_nodelay(true)?;
    let mut conn = Connection::new(FromTokio::new(stream));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.receive(&mut buf).await {
            Ok(msg) => {
                let len = msg.len();
                // A peer refusing our echo (0x00) is an answer, not a failure.
                match conn.transmit(&buf[..len]).await {
                    Ok(()) | Err(tinyproto::Error::Rejected { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(tinyproto::Error::Closed) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Sends each message and collects the replies.
async fn exchange(addr: SocketAddr, messages: &[&[u8]]) -> Result<Vec<Vec<u8>>, Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut conn = Connection::new(FromTokio::new(stream));
    let mut buf = vec![0u8; 64 * 1024];
    let mut replies = Vec::new();
    for msg in messages {
        conn.transmit(msg).await?;
        replies.push(conn.receive(&mut buf).await?.to_vec());
    }
    Ok(replies)
}

/// A server and a client on loopback; returns what the client got back.
async fn run(messages: &[&[u8]]) -> Result<Vec<Vec<u8>>, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(echo_one(listener));
    let replies = exchange(addr, messages).await?;
    server.await.expect("the echo task panicked")?;
    Ok(replies)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let big = vec![0x5A; 60_000];
    let messages: [&[u8]; 3] = [b"hello from tokio", b"", &big];
    for (msg, reply) in messages.iter().zip(run(&messages).await?) {
        println!("sent {} bytes, got back {} bytes", msg.len(), reply.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn test_echo_both_ways() {
        let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let messages: [&[u8]; 4] = [b"hello", b"", &big, b"last"];
        let replies = run(&messages).await.unwrap();
        assert_eq!(replies.len(), messages.len());
        for (msg, reply) in messages.iter().zip(&replies) {
            assert_eq!(reply.as_slice(), *msg);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn test_oversized_reply_is_refused_and_the_connection_goes_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(echo_one(listener));
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut conn = Connection::new(FromTokio::new(stream));
        conn.transmit(&[1u8; 100]).await.unwrap();
        let mut small = [0u8; 10];
        let refused = conn.receive(&mut small).await;
        assert!(
            matches!(
                refused,
                Err(tinyproto::Error::TooLarge {
                    len: 100,
                    capacity: 10
                })
            ),
            "{refused:?}"
        );
        // The server's echo was rejected; the connection still carries the next one.
        conn.transmit(b"ok").await.unwrap();
        assert_eq!(conn.receive(&mut small).await.unwrap(), b"ok");
        drop(conn);
        server.await.unwrap().unwrap();
    }
}
