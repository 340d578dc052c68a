//! The emulated board's stand-in for a true random number generator: bytes
//! from the host's `/dev/urandom`, read through semihosting. QEMU's
//! `mps2-an386` has no TRNG; a real board replaces [`HostEntropy`] with its
//! own (STM32 `RNG`, RP2040 ROSC, nRF `RNG`), and never with a fixed seed.
//!
//! Semihosting calls are `unsafe` (they hand the host raw pointers): this
//! module and `lan9118/mmio.rs` are the only ones that allow it.
#![allow(unsafe_code)]

use cortex_m_semihosting::{nr, syscall};

/// The host's `/dev/urandom`, opened for each fill (a TLS handshake takes
/// a few dozen bytes).
#[derive(Debug, Default)]
pub struct HostEntropy;

impl HostEntropy {
    /// Fills `dest` with random bytes; panics if the host has none to give
    /// (a TLS handshake must never run on predictable bytes).
    pub fn fill(&mut self, dest: &mut [u8]) {
        const PATH: &[u8] = b"/dev/urandom\0";
        // SAFETY: OPEN reads `PATH.len() - 1` bytes of a NUL-terminated
        // string that lives for the whole call.
        let fd = unsafe { syscall!(OPEN, PATH.as_ptr(), nr::open::R_BINARY, PATH.len() - 1) };
        if fd as isize == -1 {
            panic!("no entropy: the host's /dev/urandom did not open");
        }
        // SAFETY: READ writes at most `dest.len()` bytes into `dest`, which
        // is borrowed mutably for the call; it returns how many it did not.
        let missed = unsafe { syscall!(READ, fd, dest.as_mut_ptr(), dest.len()) };
        // SAFETY: CLOSE takes the descriptor OPEN gave; no memory is passed.
        unsafe { syscall!(CLOSE, fd) };
        if missed != 0 {
            panic!("no entropy: the host's /dev/urandom gave too few bytes");
        }
    }
}

impl rand_core::RngCore for HostEntropy {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.fill(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill(dest);
        Ok(())
    }
}

/// Cryptographically secure as its source: the host's kernel.
impl rand_core::CryptoRng for HostEntropy {}
