#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tinyproto_fuzz::session::run(data));
