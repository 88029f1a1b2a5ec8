//! What the engine reports as it works, for the application's metrics: sessions opened,
//! moved and closed, handshakes refused, packets and bytes each way, per transport. The engine
//! calls an [`EngineObserver`] and knows nothing of how (or whether) it is counted, so it
//! depends on nothing above it.

use std::sync::Arc;

use super::{CloseReason, TransportKind};

/// Told of the engine's work. Every method has a default that does nothing; they run on the
/// actor doing the work (per read or per written batch, never per byte), so they must be cheap
/// and must not block.
pub trait EngineObserver: Send + Sync + 'static {
    /// A session opened on `transport`.
    fn opened(&self, _transport: TransportKind) {}
    /// A session moved from polling onto a WebSocket.
    fn upgraded(&self) {}
    /// A session's state was dropped: it no longer counts as open on `transport`.
    fn ended(&self, _transport: TransportKind) {}
    /// A session closed for `reason` (told once, before the layer above hears of it).
    fn closed(&self, _reason: CloseReason) {}
    /// A handshake was refused for `reason`.
    fn refused(&self, _reason: &'static str) {}
    /// `packets` packets of `bytes` bytes in all came in on `transport`.
    fn received(&self, _transport: TransportKind, _packets: u64, _bytes: u64) {}
    /// `packets` packets of `bytes` bytes in all went out on `transport`.
    fn sent(&self, _transport: TransportKind, _packets: u64, _bytes: u64) {}
    /// A polling request came in, straight from its client or forwarded by another node.
    fn polling_request(&self, _forwarded: bool) {}
}

/// The observer that counts nothing (the default).
pub struct Unobserved;

impl EngineObserver for Unobserved {}

/// The engine's observer, as [`super::EngineConfig::observer`] holds it.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn EngineObserver>);

impl Default for Observer {
    fn default() -> Self {
        Observer(Arc::new(Unobserved))
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer(..)")
    }
}

impl std::ops::Deref for Observer {
    type Target = dyn EngineObserver;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
