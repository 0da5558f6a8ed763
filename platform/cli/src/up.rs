//! `pier up`.

#[derive(Debug, clap::Args)]
pub struct UpArgs {}

pub fn run(_args: &UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("pier up: not built yet")
}
