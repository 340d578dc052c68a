//! Prints the scenario a fuzz input decodes to, then runs it:
//! `cargo run --example show -- <receiver|roundtrip|session> FILE`.

use arbitrary::{Arbitrary, Unstructured};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, file] = &args[..] else {
        eprintln!("usage: show <receiver|roundtrip|session> FILE");
        std::process::exit(2);
    };
    let data = std::fs::read(file).expect("read input");
    match target.as_str() {
        "receiver" => {
            println!("{data:02x?}");
            tinyproto_fuzz::receiver::run(&data);
        }
        "roundtrip" => {
            let input =
                tinyproto_fuzz::roundtrip::Input::arbitrary_take_rest(Unstructured::new(&data));
            println!("{input:#?}");
            tinyproto_fuzz::roundtrip::run(&data);
        }
        "session" => {
            let input =
                tinyproto_fuzz::session::Input::arbitrary_take_rest(Unstructured::new(&data));
            println!("{input:#?}");
            tinyproto_fuzz::session::run(&data);
        }
        other => panic!("unknown target {other}"),
    }
    println!("ok");
}
