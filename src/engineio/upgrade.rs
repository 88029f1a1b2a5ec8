//! The upgrade from polling to WebSocket, as messages between the two actors that carry it
//! out (the session's rules are in [`super::session::Session`]):
//!
//! 1. A WebSocket arrives with the sid of a polling session: the HTTP dispatch starts a
//!    probing connection, which asks the polling session [`UpgradeStart`] (refused if another
//!    upgrade is under way, or the session is closing).
//! 2. The client sends `2probe`, the connection answers `3probe` and tells the polling
//!    session [`UpgradeProbed`]: a waiting poll is answered `6` (noop) so the client pauses.
//! 3. The client sends `5`: the connection asks [`UpgradeComplete`], and the polling session
//!    hands over its [`SessionCore`] (the state machine, the layer above's handler, the slot),
//!    routes the sid to the WebSocket and stops. Undelivered packets stay in the outbox the
//!    two share, so their order survives the switch.
//! 4. A probe that goes away or times out sends [`UpgradeAbort`]; a session that closes
//!    under a probe tells it [`SessionGone`].

use actix::{Message, Recipient};

use super::shared::SessionCore;

/// A WebSocket connected with this sid and wants to probe.
#[derive(Message)]
#[rtype(result = "bool")]
pub(crate) struct UpgradeStart {
    pub(crate) ws: Recipient<SessionGone>,
}

/// The probing WebSocket got `2probe` and answered `3probe`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct UpgradeProbed;

/// The client sent `5`: hand the session over to the WebSocket.
#[derive(Message)]
#[rtype(result = "Option<SessionCore>")]
pub(crate) struct UpgradeComplete;

/// The probing WebSocket went away or timed out.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct UpgradeAbort;

/// Told to the probing WebSocket when the session closes under it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SessionGone;
