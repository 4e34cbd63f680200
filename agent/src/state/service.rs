//! A service port: a virtual IP and port and the endpoint addresses behind it. Only
//! addresses: the balancer's load and health marks live in the proxy
//! ([`crate::proxy::balance`]), so that a new snapshot keeps them.

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServicePort {
    pub name: String,
    pub namespace: String,
    pub vip: IpAddr,
    pub port: u16,
    pub endpoints: Vec<SocketAddr>,
}

impl ServicePort {
    /// `namespace/name`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The address clients connect to, `vip:port`: what the service is looked up by.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.vip, self.port)
    }
}
