//! A chat hub: every client sends whenever it likes and receives every
//! other client's messages, with no conflict however busy it gets.
//!
//! ```text
//! cargo run -p tinyproto-std --example hub -- serve 127.0.0.1:7000
//! cargo run -p tinyproto-std --example hub -- join 127.0.0.1:7000 alice
//! cargo run -p tinyproto-std --example hub -- join 127.0.0.1:7000 bob
//! ```
//!
//! Type lines into either client. The protocol is half-duplex, so a client
//! and the hub that sent at the same moment on one connection would cross.
//! Here each client holds a [`Duplex`](tinyproto_std::Duplex) link instead:
//! one connection it sends on, one the hub sends on.

use std::io::BufRead;

use tinyproto_std::{on_message, Client, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        ["serve", addr] => serve(addr),
        ["join", addr, name] => join(addr, name),
        _ => {
            eprintln!("usage: hub serve ADDR | hub join ADDR NAME");
            std::process::exit(2);
        }
    }
}

/// The hub: each message that comes up a link goes down every other link.
fn serve(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut server = Server::new();
    server.set_duplex(true);
    println!("hub on {}", server.add_addr(addr)?);
    server.set_conn_handler(|| {
        on_message(|conn, msg| {
            conn.active_connections().broadcast(msg, Some(conn.id()));
            Ok(())
        })
    });
    server.start()?;
    Ok(())
}

/// A client: lines from stdin go up, everyone else's lines come down.
fn join(addr: &str, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (mut up, mut down) = Client::new().connect_duplex(addr)?.split();
    std::thread::spawn(move || loop {
        match down.receive() {
            Ok(msg) => println!("{}", String::from_utf8_lossy(&msg)),
            // Nobody said anything for a while: keep listening.
            Err(e) if e.is_timeout() && !down.is_broken() => {}
            Err(e) => {
                eprintln!("hub: {e}");
                std::process::exit(1);
            }
        }
    });
    for line in std::io::stdin().lock().lines() {
        up.transmit(format!("{name}: {}", line?).as_bytes())?;
    }
    up.close();
    Ok(())
}
