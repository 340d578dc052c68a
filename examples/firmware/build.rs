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
    if env::var_os("CARGO_FEATURE_TLS").is_some() {
        bake_in_certificates(&out);
    }
    if env::var_os("CARGO_FEATURE_DEFMT").is_some() {
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }
}

/// The TLS client carries its CA, its own certificate and key, and (for the
/// refusal checks) a certificate from another CA: DER files from
/// `TINYPROTO_FW_TLS_DIR`, made at test time by `.ci/firmware-pki.sh`, so
/// that no key is committed.
fn bake_in_certificates(out: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=TINYPROTO_FW_TLS_DIR");
    let Some(dir) = env::var_os("TINYPROTO_FW_TLS_DIR") else {
        panic!(
            "feature tls bakes in a CA and certificates: run `bash .ci/firmware-pki.sh DIR` \
             and build with TINYPROTO_FW_TLS_DIR=DIR"
        );
    };
    for file in [
        "ca.der",
        "device.der",
        "device-key.der",
        "stranger.der",
        "stranger-key.der",
    ] {
        let from = PathBuf::from(&dir).join(file);
        println!("cargo:rerun-if-changed={}", from.display());
        fs::copy(&from, out.join(file))
            .unwrap_or_else(|e| panic!("{}: {e} (made by .ci/firmware-pki.sh)", from.display()));
    }
}
