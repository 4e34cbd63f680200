//! Mutual TLS for HBONE connections. rustls runs the handshake (its unbuffered connections:
//! [`connect`], [`accept`]); after it, [`TlsStream`] protects the records itself with the
//! traffic keys rustls derived, as kernel TLS would, so that a record is sealed from the
//! sender's buffer and opened where it was read, without rustls' intermediate buffers.
//! rustls still computes every later key (KeyUpdate) and takes session tickets.

#[cfg(test)]
mod bad_input_tests;
pub(crate) mod errors;
#[doc(hidden)]
pub(crate) mod fuzzing;
mod handshake;
mod record;
mod stream;
#[doc(hidden)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

pub(crate) use handshake::{accept, connect};
