//! Message transforms, like the reference's `TinyProtoPlugin`.
//!
//! Registered plugins form a chain: before sending, each plugin's
//! [`Plugin::msg_transmit`] runs in registration order; after receiving, each
//! [`Plugin::msg_receive`] runs in reverse order. Both sides of a connection
//! must register matching chains. The wire length is the length after the
//! chain, so [`max_message_len`](crate::Server::set_max_message_len) limits
//! the transformed message.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// The error a plugin returns for a message it cannot transform.
pub type PluginError = Box<dyn std::error::Error + Send + Sync>;

/// A transform applied to every message of a connection. Shared by all
/// connections of a server or client, so it must be `Send + Sync`; keep
/// per-connection state in the [`Handler`](crate::Handler) instead.
pub trait Plugin: Send + Sync + 'static {
    /// Transforms an outgoing message. By default: unchanged.
    fn msg_transmit(&self, msg: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        Ok(msg)
    }

    /// Transforms an incoming message, undoing `msg_transmit`. By default:
    /// unchanged.
    fn msg_receive(&self, msg: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        Ok(msg)
    }
}

/// An ordered chain of plugins.
#[derive(Clone, Default)]
pub(crate) struct Plugins(Vec<Arc<dyn Plugin>>);

impl fmt::Debug for Plugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plugins({})", self.0.len())
    }
}

impl Plugins {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn push(&mut self, plugin: Arc<dyn Plugin>) {
        self.0.push(plugin);
    }

    /// Runs the chain in order; borrows `msg` when there is no plugin.
    pub(crate) fn transmit<'m>(&self, msg: &'m [u8]) -> Result<Cow<'m, [u8]>, PluginError> {
        if self.0.is_empty() {
            return Ok(Cow::Borrowed(msg));
        }
        let mut msg = msg.to_vec();
        for plugin in &self.0 {
            msg = plugin.msg_transmit(msg)?;
        }
        Ok(Cow::Owned(msg))
    }

    /// Runs the chain in reverse order.
    pub(crate) fn receive(&self, mut msg: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        for plugin in self.0.iter().rev() {
            msg = plugin.msg_receive(msg)?;
        }
        Ok(msg)
    }
}

/// Compresses every message with zlib (RFC 1950), as Python's
/// `zlib.compress` / `zlib.decompress` do, so it pairs with a reference
/// plugin like:
///
/// ```python
/// class ZlibPlugin(tinyproto.TinyProtoPlugin):
///     def msg_transmit(self, msg): return zlib.compress(bytes(msg))
///     def msg_receive(self, msg): return bytearray(zlib.decompress(bytes(msg)))
/// ```
///
/// Decompression stops at a configured output limit, so a small
/// "zip bomb" cannot make it allocate more than that.
#[cfg(feature = "zlib")]
#[derive(Debug, Clone, Copy)]
pub struct ZlibPlugin {
    level: u8,
    max_output: usize,
}

#[cfg(feature = "zlib")]
impl Default for ZlibPlugin {
    /// Level 6 (zlib's default), output limit
    /// [`DEFAULT_MAX_MESSAGE_LEN`](crate::DEFAULT_MAX_MESSAGE_LEN).
    fn default() -> Self {
        Self::new(6, crate::DEFAULT_MAX_MESSAGE_LEN as usize)
    }
}

#[cfg(feature = "zlib")]
impl ZlibPlugin {
    /// Compression `level` 0 (none) to 10 (best), and the largest
    /// decompressed message accepted.
    pub fn new(level: u8, max_output: usize) -> Self {
        Self {
            level: level.min(10),
            max_output,
        }
    }
}

#[cfg(feature = "zlib")]
impl Plugin for ZlibPlugin {
    fn msg_transmit(&self, msg: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        Ok(miniz_oxide::deflate::compress_to_vec_zlib(&msg, self.level))
    }

    fn msg_receive(&self, msg: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&msg, self.max_output)
            .map_err(|e| format!("zlib: {e}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Append(u8);

    impl Plugin for Append {
        fn msg_transmit(&self, mut msg: Vec<u8>) -> Result<Vec<u8>, PluginError> {
            msg.push(self.0);
            Ok(msg)
        }
        fn msg_receive(&self, mut msg: Vec<u8>) -> Result<Vec<u8>, PluginError> {
            match msg.pop() {
                Some(b) if b == self.0 => Ok(msg),
                other => Err(format!("expected {} got {other:?}", self.0).into()),
            }
        }
    }

    #[test]
    fn test_chain_order_transmit_forward_receive_reverse() {
        let mut chain = Plugins::default();
        chain.push(Arc::new(Append(1)));
        chain.push(Arc::new(Append(2)));
        let wire = chain.transmit(b"x").unwrap().into_owned();
        assert_eq!(wire, b"x\x01\x02");
        assert_eq!(chain.receive(wire).unwrap(), b"x");
        assert!(chain.receive(b"x\x02\x01".to_vec()).is_err());
    }

    #[test]
    fn test_empty_chain_borrows() {
        let chain = Plugins::default();
        assert!(matches!(
            chain.transmit(b"abc").unwrap(),
            Cow::Borrowed(b"abc")
        ));
    }

    #[cfg(feature = "zlib")]
    #[test]
    fn test_zlib_round_trip_and_limit() {
        let z = ZlibPlugin::new(6, 1000);
        let msg = vec![7u8; 1000];
        let wire = z.msg_transmit(msg.clone()).unwrap();
        assert!(wire.len() < 100);
        assert_eq!(&wire[..1], &[0x78]); // zlib header
        assert_eq!(z.msg_receive(wire).unwrap(), msg);
        let bomb = z.msg_transmit(vec![0u8; 1001]).unwrap();
        assert!(z.msg_receive(bomb).is_err());
        assert!(z.msg_receive(b"not zlib".to_vec()).is_err());
    }
}
