//! The seam to other nodes: a broadcast is delivered to this node's sockets at once, then
//! handed to the [`Adapter`], which carries it to every other node; a node that receives one
//! applies it with [`SocketIo::apply_remote`](super::SocketIo::apply_remote), to its own
//! sockets only.
//!
//! The adapter must not block or wait: local delivery never depends on it. The Redis adapter
//! lives in [`crate::cluster`].

use super::packet::Payload;
use crate::engineio::Sid;

/// Which sockets of a namespace a broadcast reaches.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The namespace.
    pub nsp: String,
    /// Sockets in any of these rooms; none: every socket of the namespace.
    pub rooms: Vec<String>,
    /// Sockets left out.
    pub except: Vec<Sid>,
}

/// What a broadcast does to the sockets it reaches.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Emit an event.
    Emit {
        /// The event's name.
        event: String,
        /// Its arguments.
        payload: Payload,
        /// Dropped for sockets whose queue is full, instead of closing them.
        volatile: bool,
    },
    /// Disconnect the sockets from the namespace (a Socket.IO DISCONNECT each).
    Disconnect,
    /// The socket with this private id was restored on the publishing node: a copy of it
    /// here (waiting for a client that went there instead) ends without a word to anyone,
    /// and leaves the recovery store's record to its new node. Rooms are not looked at.
    Release {
        /// The socket's private id.
        pid: Sid,
    },
}

/// A broadcast as it travels between nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    /// Who it reaches.
    pub target: Target,
    /// What it does.
    pub op: Operation,
}

/// Carries broadcasts to the other nodes.
pub trait Adapter: Send + Sync + 'static {
    /// A broadcast was applied on this node; send it to the others. Must return at once.
    fn publish(&self, broadcast: Broadcast);
}
