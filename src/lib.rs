//! voxio: a realtime voice server. Engine.IO v4 and Socket.IO v5 on actix, with a voice
//! pipeline behind the `/voice` namespace.
//!
//! Layers, bottom up: [`engineio`] (the protocol core and its actix drivers), then the web
//! application in [`web`]; [`config`] holds every setting; [`protocol_test`] serves the
//! endpoints external conformance suites drive.

pub mod auth;
#[cfg(feature = "bench")]
pub mod bench_voice;
pub mod cluster;
pub mod config;
pub mod engineio;
pub mod forward;
pub mod protocol_test;
pub mod recovery_store;
pub mod server;
pub mod socketio;
pub mod telemetry;
pub mod voice;
pub mod web;
