//! Where the state comes from. Each source builds a [`State`](crate::state::State) and
//! publishes it through its [`SourceHandle`](crate::state::SourceHandle) into the
//! [`StateStore`](crate::state::StateStore); it knows nothing of the enrollment reconciler
//! or the proxy, which watch the store. Standalone mode reads a file ([`file`]); the
//! Kubernetes source will be a sibling.

pub(crate) mod file;
