//! A message held until it is whole: in memory up to a threshold, in an
//! unlinked temporary file beyond (it vanishes with the process). Nothing of
//! a message reaches stdout before its last byte has arrived.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Messages are held in memory up to this many bytes.
pub const IN_MEMORY: usize = 8 * 1024 * 1024;

/// Bytes of one message, held until it is complete.
#[derive(Debug, Default)]
pub struct Spool {
    head: Vec<u8>,
    file: Option<File>,
    len: u64,
}

impl Spool {
    /// An empty spool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes`, moving to a temporary file past [`IN_MEMORY`].
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.head.len() + bytes.len() > IN_MEMORY {
            let mut file = tempfile::tempfile()?;
            file.write_all(&self.head)?;
            self.head = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(bytes)?,
            None => self.head.extend_from_slice(bytes),
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Writes everything held to `out` and empties the spool.
    pub fn copy_to(&mut self, out: &mut impl Write) -> io::Result<()> {
        match &mut self.file {
            Some(file) => {
                file.seek(SeekFrom::Start(0))?;
                let copied = io::copy(&mut file.take(self.len), out)?;
                if copied != self.len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the temporary file shrank",
                    ));
                }
            }
            None => out.write_all(&self.head)?,
        }
        self.clear();
        Ok(())
    }

    /// Everything held, as a reader from its first byte, and its length.
    pub fn into_reader(self) -> io::Result<(Box<dyn Read>, u64)> {
        match self.file {
            Some(mut file) => {
                file.seek(SeekFrom::Start(0))?;
                Ok((Box::new(file.take(self.len)), self.len))
            }
            None => Ok((Box::new(io::Cursor::new(self.head)), self.len)),
        }
    }

    /// Forgets what is held (a message that broke off).
    pub fn clear(&mut self) {
        self.head.clear();
        self.file = None;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_small_message_stays_in_memory_and_copies_whole() {
        let mut spool = Spool::new();
        spool.write(b"hello ").unwrap();
        spool.write(b"world").unwrap();
        assert!(spool.file.is_none());
        let mut out = Vec::new();
        spool.copy_to(&mut out).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(spool.len, 0);
    }

    #[test]
    fn test_large_message_moves_to_a_file_and_copies_whole() {
        let mut spool = Spool::new();
        let chunk: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        for _ in 0..9 {
            spool.write(&chunk).unwrap();
        }
        assert!(spool.file.is_some(), "past the in-memory threshold");
        let mut out = Vec::new();
        spool.copy_to(&mut out).unwrap();
        assert_eq!(out.len(), 9 * chunk.len());
        assert!(out.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
    }

    #[test]
    fn test_into_reader_reads_back_from_memory_and_from_the_file() {
        let chunk: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        for (writes, on_file) in [(1, false), (9, true)] {
            let mut spool = Spool::new();
            for _ in 0..writes {
                spool.write(&chunk).unwrap();
            }
            assert_eq!(spool.file.is_some(), on_file);
            let (mut reader, len) = spool.into_reader().unwrap();
            let mut out = Vec::new();
            reader.read_to_end(&mut out).unwrap();
            assert_eq!(len, (writes * chunk.len()) as u64);
            assert_eq!(out.len() as u64, len);
            assert!(out.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
        }
    }

    #[test]
    fn test_cleared_spool_writes_nothing() {
        let mut spool = Spool::new();
        spool.write(b"partial").unwrap();
        spool.clear();
        let mut out = Vec::new();
        spool.copy_to(&mut out).unwrap();
        assert!(out.is_empty());
    }
}
