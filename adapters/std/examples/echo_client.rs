//! The client side of `echo_server`, in both styles: a handler-driven
//! connection (like a `TinyProtoConnection` subclass given to
//! `TinyProtoClient`) and plain synchronous calls.
//!
//! ```text
//! cargo run -p tinyproto-std --example echo_client -- 127.0.0.1:7000 hello world
//! ```

use std::time::Duration;

use tinyproto_std::{Client, Conn, Error, Handler};

/// Sends every word in `pre_loop` order, one per echo, then stops.
struct Sender {
    words: Vec<String>,
    next: usize,
}

impl Handler for Sender {
    fn pre_loop(&mut self, conn: &mut Conn) -> Result<(), Error> {
        self.send_next(conn)
    }

    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        println!("echo: {:?}", String::from_utf8_lossy(msg));
        self.send_next(conn)
    }

    fn post_loop(&mut self, _conn: &mut Conn, result: &Result<(), Error>) {
        println!("handler connection ended: {result:?}");
    }
}

impl Sender {
    fn send_next(&mut self, conn: &mut Conn) -> Result<(), Error> {
        match self.words.get(self.next) {
            Some(word) => {
                self.next += 1;
                conn.transmit(word.as_bytes())
            }
            None => {
                conn.stop();
                Ok(())
            }
        }
    }
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7000".into());
    let mut words: Vec<String> = args.collect();
    if words.is_empty() {
        words = vec!["hello".into(), "tinyproto".into()];
    }

    let mut client = Client::new();
    client.set_timeout(Duration::from_secs(5));

    // Plain synchronous use.
    let mut conn = client.connect(addr.as_str())?;
    conn.transmit(b"sync hello")?;
    println!("sync echo: {:?}", String::from_utf8_lossy(&conn.receive()?));
    conn.close();

    // A handler on a thread of its own.
    client.set_conn_handler(move || Sender {
        words: words.clone(),
        next: 0,
    });
    let id = client.connect_to(addr.as_str())?;
    let result = client.join(id, Duration::from_secs(30));
    println!("{id} finished: {result:?}");
    Ok(())
}
