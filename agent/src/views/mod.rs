//! The CLI's views of an agent, read from its admin API: `meshd stat`, `meshd edges`,
//! `meshd tap` and `meshd log-level`, as tables for people or JSON for scripts.

pub mod authz;
mod client;
pub mod edges;
pub mod policy;
pub mod stat;
pub mod tap;

pub use client::AdminClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Formats an optional number, `-` when absent.
fn num(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}
