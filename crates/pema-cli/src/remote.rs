//! The data owner's connection to a PLM owner's `pema serve` (`--plm URL`), and
//! `pema serve` itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use pema_memory::PromptTemplate;
use pema_offsite::{Limits, RemotePlm, ServeConfig, Served};

use crate::args::TaskInput;

/// The environment variable holding a bearer token (client and server).
pub const TOKEN_ENV: &str = "PEMA_TOKEN";

/// The bearer tokens: every non-empty line of `file`, else `PEMA_TOKEN`. Never from the
/// command line (it would show in process listings and shell history).
pub fn tokens(file: Option<&Path>) -> Result<Vec<String>> {
    let t: Vec<String> = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the token file {}", f.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => std::env::var(TOKEN_ENV)
            .map(|v| v.trim().to_string())
            .into_iter()
            .filter(|v| !v.is_empty())
            .collect(),
    };
    match (t.is_empty(), file) {
        (true, Some(f)) => bail!("the token file {} holds no token", f.display()),
        (true, None) => bail!("no access token: give a token file or set {TOKEN_ENV}"),
        (false, _) => Ok(t),
    }
}

/// The client's bearer token: the first of [`tokens`].
pub fn token(file: Option<&Path>) -> Result<String> {
    Ok(tokens(file)?.swap_remove(0))
}

/// Connects to the service at `url` with the token of `token_file` (else `PEMA_TOKEN`),
/// trusting the CA in `ca` for `https://` when given.
pub fn connect_plm<B: Backend>(
    url: &str,
    token_file: Option<&Path>,
    ca: Option<&Path>,
    device: &B::Device,
) -> Result<RemotePlm<B>> {
    let token = token(token_file)?;
    let tls = ca.map(pema_offsite::tls::client_config).transpose()?;
    RemotePlm::<B>::connect_with(url, &token, tls, device)
        .with_context(|| format!("connecting to the PLM service {url}"))
}

/// Connects to `--plm` (batch and shared prefix as the in-process engine would use them).
pub fn connect<B: Backend>(
    input: &TaskInput,
    url: &str,
    batch: usize,
    shared_prefix: bool,
    device: &B::Device,
) -> Result<(RemotePlm<B>, pema_backbone::PemaTokenizer)> {
    let plm = connect_plm::<B>(
        url,
        input.plm_token_file.as_deref(),
        input.plm_ca.as_deref(),
        device,
    )?
    .with_batch(batch)
    .with_server_log_probs(input.plm_log_probs.unwrap_or(0));
    let tok = plm.tokenizer()?;
    let plm = if shared_prefix {
        let template = PromptTemplate::resolve(&input.template)?;
        plm.with_shared_prefix(pema_pipeline::serve::template_prefix(&tok, &template)?)
    } else {
        plm
    };
    eprintln!(
        "PLM service {url}: {} (d {}, vocab {}, {} kernels)",
        plm.info().model,
        plm.info().hidden_size,
        plm.info().vocab_size,
        plm.info().kernels
    );
    Ok((plm, tok))
}

/// Arguments of `pema serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeCmdArgs {
    /// Model directory (the PLM owner's weights; they never leave this process).
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: String,
    /// File holding the accepted bearer token(s), one per line (default: `PEMA_TOKEN`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CPU weights (`packed`: the GGUF's quantised blocks; `f32`: the dequantised reference).
    /// Clients reproduce an in-process run exactly when it used the same weights.
    #[arg(long, value_enum, default_value_t = crate::args::WeightsArg::Packed)]
    pub weights: crate::args::WeightsArg,
    /// Most sessions open at once.
    #[arg(long, default_value_t = 64, value_parser = crate::values::count)]
    pub max_sessions: usize,
    /// Most rows (sequence steps, all clients together) in one forward.
    #[arg(long, default_value_t = 256, value_parser = crate::values::count)]
    pub max_rows: usize,
    /// Seconds a session may wait for its client before it is dropped.
    #[arg(long, default_value_t = 60.0, value_parser = crate::values::positive)]
    pub idle_timeout_s: f64,
    /// Serve HTTPS with this PEM certificate chain (needs `--tls-key`).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    pub device: crate::backend::DeviceArg,
}

/// Runs `pema serve` until Ctrl-C / SIGTERM, then drains the open sessions.
pub fn serve<B: Backend>(args: &ServeCmdArgs, device: &B::Device) -> Result<()> {
    let tokens = tokens(args.token_file.as_deref())?;
    let m = pema_backbone::load_model_dir::<B>(&args.model, device)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let on_cpu = args.device == crate::backend::DeviceArg::Cpu;
    let options = pema_pipeline::ServeOptions {
        weights: Some(args.weights.cpu_weights()),
        shared_prefix: false,
        max_batch: 1,
        on_cpu,
    };
    let (engine, _) = crate::serve_args::engine(
        &m.model,
        Some(&args.model),
        &m.tokenizer,
        &PromptTemplate::mt(),
        &options,
        args.weights.cpu_weights(),
    )?;
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("listening on {}", args.listen))?;
    let config = ServeConfig {
        tokens,
        limits: Limits {
            max_sessions: args.max_sessions,
            max_rows_per_forward: args.max_rows,
            ..Limits::default()
        },
        idle_timeout: Duration::from_secs_f64(args.idle_timeout_s.max(0.1)),
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some(pema_offsite::tls::server_config(c, k)?),
            _ => None,
        },
        ..ServeConfig::default()
    };
    eprintln!(
        "pema serve: {} ({} kernels) on {}://{} — Ctrl-C drains and stops",
        m.model.config.name,
        engine.kernels_name(),
        if config.tls.is_some() {
            "https"
        } else {
            "http"
        },
        listener.local_addr()?
    );
    let served = Served {
        engine: &engine,
        tokenizer: &m.tokenizer,
        weights_sha256: m.weights_sha256.clone(),
    };
    let stats = pema_offsite::serve(
        &served,
        &config,
        listener,
        pema_offsite::server::shutdown_signal(),
    )?;
    eprintln!("pema serve: stopped; {}", serde_json::to_string(&stats)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_gives_its_non_empty_lines_and_the_client_takes_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("tokens");
        std::fs::write(&f, "\n  alpha  \n\nbeta\n").expect("write");
        assert_eq!(tokens(Some(&f)).expect("tokens"), ["alpha", "beta"]);
        assert_eq!(token(Some(&f)).expect("token"), "alpha");
        std::fs::write(&f, " \n\n").expect("write");
        let e = tokens(Some(&f)).expect_err("empty").to_string();
        assert!(e.contains("holds no token"), "{e}");
        let missing = dir.path().join("absent");
        let e = format!("{:#}", token(Some(&missing)).expect_err("missing"));
        assert!(e.contains("reading the token file"), "{e}");
    }
}
