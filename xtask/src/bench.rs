//! `cargo xtask bench`: placeholder.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask bench` is not implemented yet")
}
