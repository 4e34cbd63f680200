//! The node proxy: per enrolled pod, an outbound listener on the pod's loopback (where
//! connect4/connect6 send the pod's connections), an inbound listener (where sk_lookup
//! steers connections for the pod's addresses) and, with mutual TLS, the HBONE listener on
//! port 15008. The map of the modules, and the walk of a connection through them, is in
//! `docs/architecture.md`.
//!
//! - [`listener`]: a pod's listeners and accept loops ([`accept_gate`]: outbound ones wait
//!   for the rest of their reconcile); [`context`]: what handlers share.
//! - [`outbound`]: a pod's own connections: original destination, service balancing, dial.
//! - [`inbound`]: connections to a pod: plaintext from outside the mesh, HBONE from agents.
//! - [`hbone`]: the HTTP/2 CONNECT tunnels between agents and their client pool.
//! - [`tls`]: the TLS handshake and the agent's own record layer.
//! - [`l7`]: protocol detection and HTTP proxying; [`relay`]: moving opaque bytes.
//! - [`session`]: one connection once both ends exist; [`connections`]: the registry, with
//!   the [`cancel`]lation of one connection from outside it; [`error`]: why a connection
//!   failed.

pub(crate) mod accept_gate;
pub(crate) mod authorize;
#[cfg(test)]
mod authz_tests;
pub(crate) mod balance;
pub(crate) mod buffers;
pub(crate) mod cancel;
#[cfg(test)]
mod cancel_tests;
pub(crate) mod connect;
pub(crate) mod connections;
pub(crate) mod context;
pub(crate) mod error;
#[cfg(test)]
mod framing_tests;
pub(crate) mod hbone;
pub(crate) mod inbound;
pub(crate) mod l7;
pub(crate) mod limits;
pub(crate) mod listener;
pub(crate) mod outbound;
pub(crate) mod relay;
pub(crate) mod session;
#[cfg(test)]
mod source_tests;
#[cfg(test)]
mod tap_tests;
pub(crate) mod tls;

pub(crate) use connections::Connections;
pub(crate) use context::{Mesh, PodContext, ProxyContext};
pub(crate) use listener::PodProxy;
