//! memory.x (the board's) for cortex-m-rt's link.x, and defmt.x when logging with defmt.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    // Each board's memory map lives in memory/; none is called memory.x
    // here, since the linker would find that one first (it runs in this
    // directory) whatever the board.
    let memory = if env::var_os("CARGO_FEATURE_MPS2_AN386").is_some() {
        "memory/mps2-an386.x"
    } else {
        "memory/stm32f4.x"
    };
    fs::copy(memory, out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory");
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_DEFMT").is_some() {
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }
}
