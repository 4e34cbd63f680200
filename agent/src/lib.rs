//! meshd: the sidecar-less service mesh node agent. The binary (`main.rs`) is a thin CLI
//! over this library; the modules are public for it, the integration tests and fuzz
//! targets. `docs/architecture.md` maps them.

#![warn(unreachable_pub, rust_2018_idioms)]

pub(crate) mod admin;
pub(crate) mod agent;
pub mod app;
pub mod capture;
pub mod check;
pub(crate) mod conn;
pub mod diagnostics;
pub(crate) mod drain;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub(crate) mod kube_names;
pub mod logging;
pub(crate) mod netns;
pub(crate) mod pod_routing;
pub(crate) mod proxy;
pub mod settings;
pub(crate) mod sources;
pub(crate) mod state;
pub(crate) mod telemetry;
pub mod views;
