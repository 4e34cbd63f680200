//! Where the state comes from. Standalone mode reads a file ([`file`]); the Kubernetes
//! source will feed the same [`State`](crate::state::State).

pub mod file;
