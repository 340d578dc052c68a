//! An echo server in the style of the reference's example: a connection
//! handler and server hooks, each overriding a few methods.
//!
//! ```text
//! cargo run -p tinyproto-std --example echo_server -- 127.0.0.1:7000
//! cargo run -p tinyproto-std --example echo_client -- 127.0.0.1:7000 hello
//! ```
//!
//! It stops by itself after `TINYPROTO_EXAMPLE_SECS` seconds (default 60),
//! or when a client sends `shutdown`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tinyproto_std::{Conn, ConnId, Context, Error, Handler, Hooks, Server};

/// One per connection, like a `TinyProtoConnection` subclass.
struct EchoConnection {
    received: usize,
}

impl Handler for EchoConnection {
    fn pre_loop(&mut self, conn: &mut Conn) -> Result<(), Error> {
        println!("[{}] connection from {} is up", conn.id(), conn.peer_addr());
        Ok(())
    }

    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        self.received += 1;
        println!(
            "[{}] received {:?}",
            conn.id(),
            String::from_utf8_lossy(msg)
        );
        if msg == b"shutdown" {
            conn.loop_stop_handle().stop();
        }
        conn.transmit(msg)
    }

    fn post_loop(&mut self, conn: &mut Conn, result: &Result<(), Error>) {
        println!(
            "[{}] closed after {} message(s): {:?}",
            conn.id(),
            self.received,
            result
        );
    }
}

/// The server's own hooks, like a `TinyProtoServer` subclass.
struct EchoServer {
    started: Instant,
    run_for: Duration,
}

impl Hooks for EchoServer {
    fn pre_loop(&mut self, server: &Context) {
        println!("listening on {:?}", server.local_addrs());
    }

    fn loop_pass(&mut self, server: &Context) {
        if self.started.elapsed() > self.run_for {
            server.stop();
        }
    }

    fn conn_init(&mut self, _server: &Context, id: ConnId, peer: SocketAddr) {
        println!("[{id}] new connection from {peer}");
    }

    fn conn_shutdown(
        &mut self,
        server: &Context,
        id: ConnId,
        _peer: SocketAddr,
        _result: &Result<(), Error>,
    ) {
        println!(
            "[{id}] gone; {} connection(s) left",
            server.active_connections().len()
        );
    }

    fn post_loop(&mut self, _server: &Context) {
        println!("server stopped");
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let secs = std::env::var("TINYPROTO_EXAMPLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut server = Server::new();
    server.add_addr(addr.as_str())?;
    server.set_conn_handler(|| EchoConnection { received: 0 });
    server.set_hooks(EchoServer {
        started: Instant::now(),
        run_for: Duration::from_secs(secs),
    });
    server.start()
}
