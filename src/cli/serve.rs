//! `humanlm serve`: the checkpoint behind an OpenAI-compatible endpoint.

use super::{load, RuntimeArgs};
use clap::Args;

#[derive(Args)]
pub(super) struct ServeArgs {
    #[command(flatten)]
    rt: RuntimeArgs,
    /// Port to listen on (0: any free port; the bound one is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to listen on; anything but loopback exposes the model without authentication.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

pub(super) fn serve_cmd(root: &std::path::Path, a: ServeArgs) -> anyhow::Result<()> {
    Ok(crate::serve::run(load(root, &a.rt)?, &a.host, a.port)?)
}
