//! `worker`: runs the built-in handlers (`noop`, `sleep`, `http.fetch`, `fail`) on the given
//! queues until SIGINT/SIGTERM, then drains. A second signal exits at once.

use std::time::Duration;

use clap::Parser;
use dispatch_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

/// A Dispatch worker with the built-in handlers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Flags {
    /// gRPC endpoint of dispatch.
    #[arg(long, env = "DISPATCH_WORKER_DISPATCH_URL", default_value = "http://127.0.0.1:50051")]
    dispatch_url: String,
    /// NATS server.
    #[arg(long, env = "DISPATCH_WORKER_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Queues as name=concurrency, comma-separated.
    #[arg(long, env = "DISPATCH_WORKER_QUEUES", default_value = "default=16")]
    queues: String,
    /// Worker id recorded on claims (default: worker-<pid>).
    #[arg(long, env = "DISPATCH_WORKER_ID")]
    worker_id: Option<String>,
    /// Lease asked for, in seconds.
    #[arg(long, default_value_t = 30)]
    lease_s: u64,
    /// Give up at start when NATS has not been reachable for this many seconds.
    #[arg(long, env = "DISPATCH_WORKER_CONNECT_TIMEOUT_S", default_value_t = 60)]
    connect_timeout_s: u64,
    /// Drain grace period on SIGTERM, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_grace_s: u64,
    /// Log JSON lines (every line about a job carries job_id, queue, attempt, trace_id).
    #[arg(long, env = "DISPATCH_WORKER_LOG_JSON")]
    log_json: bool,
    /// API key sent with every call to dispatch (a `worker` key; needed when dispatch has
    /// authentication on). Prefer the environment variable: flags show in `ps`.
    #[arg(long, env = "DISPATCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate(s), PEM, to trust for dispatch's TLS certificate (an https:// dispatch
    /// URL); without it the system's roots are trusted.
    #[arg(long, env = "DISPATCH_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for dispatch with mutual TLS; goes with --client-key.
    #[arg(long, env = "DISPATCH_CLIENT_CERT", value_name = "FILE", requires = "client_key")]
    client_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, env = "DISPATCH_CLIENT_KEY", value_name = "FILE", requires = "client_cert")]
    client_key: Option<std::path::PathBuf>,
    /// NATS user (with DISPATCH_NATS_PASSWORD or --nats-password-file).
    #[arg(long, env = "DISPATCH_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password; only from the environment, so it stays out of `ps`.
    #[arg(skip = std::env::var("DISPATCH_NATS_PASSWORD").unwrap_or_default())]
    nats_password: String,
    /// File whose first line is the NATS password.
    #[arg(long, env = "DISPATCH_NATS_PASSWORD_FILE", value_name = "FILE")]
    nats_password_file: Option<String>,
    /// NATS token; only from the environment (DISPATCH_NATS_TOKEN).
    #[arg(skip = std::env::var("DISPATCH_NATS_TOKEN").unwrap_or_default())]
    nats_token: String,
    /// File whose first line is the NATS token.
    #[arg(long, env = "DISPATCH_NATS_TOKEN_FILE", value_name = "FILE")]
    nats_token_file: Option<String>,
    /// File whose first line is an NATS nkey seed.
    #[arg(long, env = "DISPATCH_NATS_NKEY_SEED_FILE", value_name = "FILE")]
    nats_nkey_seed_file: Option<String>,
    /// NATS .creds file (user JWT and seed).
    #[arg(long, env = "DISPATCH_NATS_CREDS", value_name = "FILE")]
    nats_creds: Option<String>,
    /// CA certificates (PEM) for the NATS server's TLS certificate.
    #[arg(long, env = "DISPATCH_NATS_CA_CERT", value_name = "FILE")]
    nats_ca_cert: Option<String>,
    /// Client certificate (PEM) for a NATS server that verifies clients.
    #[arg(
        long,
        env = "DISPATCH_NATS_CLIENT_CERT",
        value_name = "FILE",
        requires = "nats_client_key"
    )]
    nats_client_cert: Option<String>,
    /// Private key (PEM) of --nats-client-cert.
    #[arg(
        long,
        env = "DISPATCH_NATS_CLIENT_KEY",
        value_name = "FILE",
        requires = "nats_client_cert"
    )]
    nats_client_key: Option<String>,
    /// Internal networks the built-in http.fetch may reach anyway, comma-separated
    /// (e.g. 10.1.0.0/16,127.0.0.1); by default it refuses loopback, private, link-local and
    /// multicast addresses.
    #[arg(long, env = "DISPATCH_WORKER_FETCH_ALLOW", value_delimiter = ',')]
    fetch_allow: Vec<dispatch_worker::handlers::Net>,
    /// Serve Prometheus metrics on GET /metrics at this address (e.g. 127.0.0.1:9091).
    #[arg(long, env = "DISPATCH_WORKER_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

fn parse_queues(s: &str) -> anyhow::Result<Vec<(String, usize)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (name, n) = p.split_once('=').unwrap_or((p, "4"));
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("bad concurrency in {p:?}"))?;
            anyhow::ensure!(n >= 1, "concurrency must be at least 1 in {p:?}");
            Ok((name.trim().to_string(), n))
        })
        .collect()
}

/// The TLS settings the flags ask for, or `None` (an https:// URL then trusts the system's
/// roots).
fn tls_of(flags: &Flags) -> anyhow::Result<Option<dispatch_client::Tls>> {
    if flags.ca_cert.is_none() && flags.client_cert.is_none() {
        return Ok(None);
    }
    anyhow::ensure!(
        flags.dispatch_url.starts_with("https://"),
        "--ca-cert and --client-cert need an https:// --dispatch-url, got {}",
        flags.dispatch_url
    );
    let mut tls = dispatch_client::Tls::new();
    if let Some(ca) = &flags.ca_cert {
        tls = tls.ca_file(ca)?;
    }
    if let (Some(cert), Some(key)) = (&flags.client_cert, &flags.client_key) {
        tls = tls.identity_files(cert, key)?;
    }
    Ok(Some(tls))
}

/// Runs the worker; a failure is one line on stderr (no backtrace, even with RUST_BACKTRACE
/// set) and exit status 1.
fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("worker: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let _telemetry = dispatch_telemetry::init("worker", flags.log_json).map_err(anyhow::Error::msg)?;
    let tls = tls_of(&flags)?;
    let nats = dispatch_client::nats::NatsAuth {
        user: flags.nats_user.clone().unwrap_or_default(),
        password: flags.nats_password.clone(),
        password_file: flags.nats_password_file.clone().unwrap_or_default(),
        token: flags.nats_token.clone(),
        token_file: flags.nats_token_file.clone().unwrap_or_default(),
        nkey_seed_file: flags.nats_nkey_seed_file.clone().unwrap_or_default(),
        creds_file: flags.nats_creds.clone().unwrap_or_default(),
        tls_ca_file: flags.nats_ca_cert.clone().unwrap_or_default(),
        tls_cert_file: flags.nats_client_cert.clone().unwrap_or_default(),
        tls_key_file: flags.nats_client_key.clone().unwrap_or_default(),
        tls_required: false,
    };
    nats.validate().map_err(anyhow::Error::msg)?;
    let mut cfg = WorkerConfig {
        dispatch_url: flags.dispatch_url,
        nats_url: flags.nats_url,
        queues: parse_queues(&flags.queues)?,
        lease: Duration::from_secs(flags.lease_s.max(3)),
        drain_grace: Duration::from_secs(flags.drain_grace_s),
        metrics_addr: flags.metrics_addr,
        token: flags.token.filter(|t| !t.is_empty()),
        tls,
        nats,
        connect_timeout: Duration::from_secs(flags.connect_timeout_s),
        fetch_allow: flags.fetch_allow,
        ..Default::default()
    };
    if let Some(id) = flags.worker_id {
        cfg.worker_id = id;
    }
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        tracing::info!("signal received: draining (send again to exit at once)");
        token.cancel();
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        std::process::exit(130);
    });
    Worker::new(cfg).with_builtin_handlers().run(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::parse_queues;

    #[test]
    fn queue_flags_parse_with_defaults_and_errors() {
        assert_eq!(
            parse_queues("default=16, emails").unwrap(),
            vec![("default".to_string(), 16), ("emails".to_string(), 4)]
        );
        let err = parse_queues("a=zero").unwrap_err().to_string();
        assert!(err.contains("a=zero"), "{err}");
        assert!(parse_queues("a=0").is_err());
    }
}
