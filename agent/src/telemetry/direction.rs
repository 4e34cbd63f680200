//! Which way a connection goes, as the enrolled workload sees it: the `direction` label of
//! every traffic metric and a field of every connection record and tap event.

use serde::Serialize;

/// `outbound`: the workload is the client; `inbound`: the workload is the server.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}
