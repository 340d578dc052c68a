//! The receipt a device answers a message it took in chunks with: the
//! message's length and its FNV-1a checksum, 4 bytes big-endian each (what
//! a bootloader would check an image with). Shared by this test and the
//! firmware examples (`examples/firmware`), and checked by the host tools.

/// The running FNV-1a checksum of a message streaming in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksum(u32);

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    /// The checksum of nothing (FNV-1a's offset basis).
    pub const fn new() -> Self {
        Self(0x811C_9DC5)
    }

    /// Takes in the next bytes of the message.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }

    /// The receipt for a message of `len` bytes with this checksum.
    pub fn receipt(self, len: u32) -> [u8; 8] {
        let mut receipt = [0u8; 8];
        receipt[..4].copy_from_slice(&len.to_be_bytes());
        receipt[4..].copy_from_slice(&self.0.to_be_bytes());
        receipt
    }
}
