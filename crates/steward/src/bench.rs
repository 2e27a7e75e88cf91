//! Benchmarks run from the binary so they measure the real engine. See bench/README.md.
pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
#[derive(clap::Args)]
pub struct BenchArgs {}
