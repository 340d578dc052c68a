//! The firmware clients' start-up link check: messages of 0 B, 1 B, 1 KiB,
//! 64 KiB and 1 MiB, each streamed out and its echo streamed back through
//! the socket's buffers and compared, over any transport (TCP, or TLS).

use embassy_time::Instant;
use tinyproto_embassy::{Client, Error, Transport};

use crate::log;

/// The link check's message sizes.
pub const CHECK_SIZES: [u32; 5] = [0, 1, 1024, 64 * 1024, 1024 * 1024];

/// Byte `i` of check message `n`: varies with both, so a shifted, stale or
/// swapped echo cannot pass.
fn pattern(n: usize, i: u32) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)).wrapping_add(n as u32 * 7) as u8
}

/// Why the link check failed.
#[derive(Debug)]
#[allow(dead_code)] // the fields are read through Debug, by the log line
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CheckFailed {
    /// The connection failed.
    Link(Error),
    /// The echo of message `n` differed at `offset` (or in length).
    Echo { n: usize, offset: u32 },
}

impl From<Error> for CheckFailed {
    fn from(e: Error) -> Self {
        CheckFailed::Link(e)
    }
}

/// Sends each check message and compares its echo, a chunk at a time.
pub async fn link_check<T: Transport>(client: &mut Client<'_, T>) -> Result<(), CheckFailed> {
    let mut chunk = [0u8; 512];
    for (n, &size) in CHECK_SIZES.iter().enumerate() {
        let started = Instant::now();
        let mut out = client.begin_transmit(size).await?;
        let mut sent = 0;
        while sent < size {
            let part = &mut chunk[..(size - sent).min(512) as usize];
            for (k, b) in part.iter_mut().enumerate() {
                *b = pattern(n, sent + k as u32);
            }
            out.write_all(part).await?;
            sent += part.len() as u32;
        }
        out.finish().await?;
        let mut echo = client.begin_receive(size).await?;
        if echo.len() != size {
            return Err(CheckFailed::Echo {
                n,
                offset: echo.len().min(size),
            });
        }
        let mut offset = 0;
        while echo.remaining() > 0 {
            let got = echo.read(&mut chunk).await?;
            if let Some(k) = (0..got).find(|&k| chunk[k] != pattern(n, offset + k as u32)) {
                return Err(CheckFailed::Echo {
                    n,
                    offset: offset + k as u32,
                });
            }
            offset += got as u32;
        }
        log!(
            "link check: {} B echoed in {} ms",
            size,
            started.elapsed().as_millis()
        );
    }
    Ok(())
}
