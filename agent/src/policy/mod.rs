//! Linkerd's inbound authorization policy, apart from I/O: the resources users write
//! (`Server`, `ServerAuthorization`, `AuthorizationPolicy`, `MeshTLSAuthentication`,
//! `NetworkAuthentication`, `HTTPRoute`, `GRPCRoute`), read from multi-document YAML and
//! validated with Linkerd's webhook messages ([`document`]); compiled per workload and port
//! ([`compile`]); and decided per connection or request by pure functions ([`decide`]).
//! `docs/policy.md` is the reference.
//!
//! The proxy's use: once per inbound connection, `index.port(workload, port)` gives an
//! `Arc<PortPolicy>` (kept for the connection and re-fetched when the index changes); then
//! [`decide_tcp`] per connection, or [`decide_http`] per request.

pub mod authz;
pub mod check;
pub mod compile;
pub mod decide;
pub mod defaults;
pub mod document;
pub mod meta;
pub mod net;
pub mod resources;
pub mod routes;
pub mod store;

pub use authz::Client;
pub use compile::{compile, PolicyIndex, PolicySet, PolicyWorkload, PortPolicy};
pub use decide::{decide_http, decide_tcp, HttpDecision, HttpOutcome, TcpDecision, TcpOutcome};
pub use defaults::{DefaultPolicy, PolicySettings};
pub use routes::RequestHead;
pub use store::{Compiled, PolicyStore};

#[cfg(test)]
mod tests;
