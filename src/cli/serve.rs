//! `humanlm serve`: the checkpoint behind an OpenAI-compatible endpoint, or (`--as-user`) the
//! simulated user of a scenario behind one.

use super::simulate::{prompt_set, SimSamplingArgs};
use super::{load, mode_parser, RuntimeArgs};
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
    /// Be the simulated user of --scenario: a chat request carries the conversation from the
    /// assistant's side, the reply is the user's next turn (with the end marker when it ends).
    #[arg(long, requires = "scenario")]
    as_user: bool,
    /// The scenario whose persona, intent and end markers the simulated user has.
    #[arg(long)]
    scenario: Option<String>,
    /// The simulated user's prompt set (default: the checkpoint's, else humanlm).
    #[arg(long, requires = "as_user")]
    prompts: Option<String>,
    #[arg(long, value_parser = mode_parser(), default_value = "humanlm", requires = "as_user")]
    mode: crate::sim::Mode,
    /// The simulated user's sampling (a request's temperature, top_p, max_tokens and seed
    /// override it).
    #[command(flatten)]
    sampling: SimSamplingArgs,
    /// A request body must arrive within this many seconds (408 otherwise).
    #[arg(long, default_value_t = 30.0)]
    body_timeout_s: f64,
    /// Larger request bodies are refused (413).
    #[arg(long, default_value_t = 4.0)]
    max_body_mb: f64,
    /// Requests in flight (queued, generating or streaming) beyond this are answered 503.
    #[arg(long, default_value_t = 64)]
    max_requests: usize,
    /// After Ctrl-C or SIGTERM, open requests get this many seconds before their connections
    /// are dropped (a second signal drops them at once).
    #[arg(long, default_value_t = 10.0)]
    shutdown_timeout_s: f64,
}

pub(super) fn serve_cmd(root: &std::path::Path, a: ServeArgs) -> anyhow::Result<()> {
    let as_user = match (&a.scenario, a.as_user) {
        (Some(id), true) => {
            let scenario = crate::scenario::find(id, std::path::Path::new("scenarios"))?.scenario;
            let ckpt = crate::model::Checkpoint::resolve(&a.rt.checkpoint, root)?;
            let set = prompt_set(a.prompts.as_deref(), ckpt.default_prompt_set()?)?;
            let sampling = a.sampling.choice();
            if sampling.n != 1 {
                anyhow::bail!(
                    "--n {}: a simulated user writes one turn a request",
                    sampling.n
                );
            }
            Some(crate::serve::AsUser::new(scenario, set, a.mode, sampling))
        }
        (Some(_), false) => anyhow::bail!("--scenario is for --as-user"),
        _ => None,
    };
    let secs = |s: f64, flag: &str| -> anyhow::Result<std::time::Duration> {
        std::time::Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow::anyhow!("--{flag} {s}: expected a positive number of seconds"))
    };
    if a.max_requests == 0 || a.max_body_mb.is_nan() || a.max_body_mb <= 0.0 {
        anyhow::bail!("--max-requests and --max-body-mb must be positive");
    }
    let limits = crate::serve::Limits {
        body_timeout: secs(a.body_timeout_s, "body-timeout-s")?,
        max_body: (a.max_body_mb * 1024.0 * 1024.0) as usize,
        max_requests: a.max_requests,
        shutdown_timeout: secs(a.shutdown_timeout_s, "shutdown-timeout-s")?,
    };
    Ok(crate::serve::run_as(
        load(root, &a.rt)?,
        as_user,
        &a.host,
        a.port,
        limits,
    )?)
}
