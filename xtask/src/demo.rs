//! `cargo xtask demo`: placeholder.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask demo` is not implemented yet")
}
