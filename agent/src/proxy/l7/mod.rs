//! Layer 7: what protocol a connection speaks ([`detect`]) and, for HTTP/1.1 and HTTP/2,
//! proxying it request by request with golden metrics and tap events ([`http`]).

pub(crate) mod detect;
pub(crate) mod heads;
pub(crate) mod http;
