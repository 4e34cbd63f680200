//! The outbound routing decision, apart from the I/O: from a pod's original destination
//! and one state snapshot, where to go and how. [`destination`] says whether the address is
//! a service port (balanced over its endpoints) or a single address; [`plan`] says, for the
//! address to dial, whether it is reached over mutual TLS (HBONE, and which identity the
//! server must prove) or by a plain connection, who the peer workload is, and whether the
//! port is opaque (no protocol detection). The handler in [`super`] does the dialing.

use std::{net::SocketAddr, sync::Arc};

use crate::{
    identity::Identity,
    state::{is_opaque, ServicePort, State, Workload},
};

/// What the original destination is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destination {
    /// A service port: the connection goes to one of its endpoints.
    Service(Arc<ServicePort>),
    /// Any other address: the connection goes there.
    Address(SocketAddr),
}

/// Whether `dst` is a service port of `state`.
pub(crate) fn destination(state: &State, dst: SocketAddr) -> Destination {
    match state.service(&dst) {
        Some(svc) => Destination::Service(svc.clone()),
        None => Destination::Address(dst),
    }
}

/// How to reach one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dial {
    /// An HBONE tunnel to the address's agent; the server must prove `expected`.
    Hbone { expected: Identity },
    /// A plain TCP connection from inside the pod's namespace.
    Plain,
}

/// The plan for one address to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub dial: Dial,
    /// The mesh workload that has the address, if any.
    pub peer: Option<Arc<Workload>>,
    /// Never parse the connection as HTTP (the destination's opaque ports, or Linkerd's
    /// default list for a destination outside the mesh).
    pub opaque: bool,
}

/// Plans the dial to `target`. `trust_domain` is `Some` when mutual TLS is on and the
/// client pod has an identity: then a mesh workload is reached over HBONE and must prove
/// its service account's identity; anything else (no mutual TLS, an address outside the
/// mesh) is dialed plainly.
pub(crate) fn plan(state: &State, trust_domain: Option<&str>, target: SocketAddr) -> Plan {
    let peer = state.workload_by_ip(&target.ip()).cloned();
    let dial = match (trust_domain, &peer) {
        (Some(td), Some(w)) => Dial::Hbone {
            expected: Identity::new(td, &w.namespace, &w.service_account),
        },
        _ => Dial::Plain,
    };
    let opaque = is_opaque(peer.as_deref(), target.port());
    Plan { dial, peer, opaque }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conn::testing::workload, state::DEFAULT_OPAQUE_PORTS};

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    /// `web-1` (10.0.0.2, service account `web`, port 5432 opaque) and the service
    /// `default/web` at 10.96.0.10:80 with it as the endpoint.
    fn state() -> State {
        let mut web = (*workload("web-1", "web", "10.0.0.2")).clone();
        web.opaque_ports = [5432].into_iter().collect();
        let svc = ServicePort {
            name: "web".into(),
            namespace: "default".into(),
            vip: "10.96.0.10".parse().expect("vip"),
            port: 80,
            endpoints: vec![addr("10.0.0.2:8080")],
        };
        State::new("n1", [web], [svc])
    }

    #[test]
    fn a_service_port_is_balanced_and_any_other_address_dialed() {
        let s = state();
        match destination(&s, addr("10.96.0.10:80")) {
            Destination::Service(svc) => assert_eq!(svc.key(), "default/web"),
            other => panic!("{other:?}"),
        }
        // The VIP on another port, and a pod address, are not service ports.
        for a in ["10.96.0.10:81", "10.0.0.2:80", "192.0.2.1:443"] {
            assert_eq!(destination(&s, addr(a)), Destination::Address(addr(a)));
        }
    }

    #[test]
    fn a_mesh_workload_is_reached_over_hbone_and_must_prove_its_identity() {
        let p = plan(&state(), Some("cluster.local"), addr("10.0.0.2:8080"));
        assert_eq!(
            p.dial,
            Dial::Hbone {
                expected: Identity::new("cluster.local", "default", "web")
            }
        );
        assert_eq!(
            p.peer.as_ref().map(|w| w.key()),
            Some("default/web-1".into())
        );
        assert!(!p.opaque);
        assert_eq!(
            p.dial,
            Dial::Hbone {
                expected: "spiffe://cluster.local/ns/default/sa/web"
                    .parse()
                    .expect("id")
            }
        );
    }

    #[test]
    fn without_mutual_tls_or_outside_the_mesh_the_dial_is_plain() {
        let s = state();
        let in_mesh = plan(&s, None, addr("10.0.0.2:8080"));
        assert_eq!(in_mesh.dial, Dial::Plain);
        assert!(in_mesh.peer.is_some(), "the peer is still known");
        let outside = plan(&s, Some("cluster.local"), addr("192.0.2.1:443"));
        assert_eq!((outside.dial, outside.peer), (Dial::Plain, None));
    }

    #[test]
    fn opaque_ports_come_from_the_destination_or_linkerds_defaults() {
        let s = state();
        // The destination's own list replaces the defaults.
        assert!(plan(&s, None, addr("10.0.0.2:5432")).opaque);
        assert!(!plan(&s, None, addr("10.0.0.2:3306")).opaque);
        // Outside the mesh, Linkerd's default list.
        for port in DEFAULT_OPAQUE_PORTS {
            let p = plan(
                &s,
                None,
                SocketAddr::new("192.0.2.1".parse().expect("ip"), port),
            );
            assert!(p.opaque, "{port}");
        }
        assert!(!plan(&s, None, addr("192.0.2.1:80")).opaque);
    }
}
