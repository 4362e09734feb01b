//! `dispatch`: parses flags, loads the configuration, runs the server until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The Dispatch job service.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (see dispatch.sample.toml).
    #[arg(long, short = 'c', env = "DISPATCH_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (overrides grpc_addr).
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address for the REST gateway (overrides http_addr).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Redis URL (overrides redis_url).
    #[arg(long)]
    redis_url: Option<String>,
    /// NATS URL (overrides nats_url).
    #[arg(long)]
    nats_url: Option<String>,
    /// API keys file: turns authentication on (overrides auth.keys_file). See `dispatch keys`.
    #[arg(long, value_name = "FILE")]
    auth_keys: Option<PathBuf>,
    /// Listen on a non-loopback address with authentication off (overrides auth.insecure):
    /// anyone who can reach the ports can read and change every job.
    #[arg(long)]
    insecure: bool,
    /// TLS certificate chain (PEM) of both listeners: turns TLS on (overrides tls.cert_file).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert (overrides tls.key_file).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) of client certificates: every connection must present one it
    /// signed, mutual TLS (overrides tls.client_ca_file).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve /metrics on this address of its own instead of the HTTP port (overrides
    /// http.metrics_addr).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Any setting as key=value, dotted for sections (e.g. jobs.lease_ms=10000). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Print the OpenAPI document of the REST gateway (generated from the proto) and exit.
    #[arg(long)]
    print_openapi: bool,
    /// Log JSON lines instead of human-readable text.
    #[arg(long, env = "DISPATCH_LOG_JSON")]
    log_json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Manage API keys (docs/security.md).
    #[command(subcommand)]
    Keys(Keys),
}

#[derive(clap::Subcommand, Debug)]
enum Keys {
    /// Adds a key to FILE (created when missing; only the key's hash is stored) and prints its
    /// token, once. A running dispatch picks the new key up within a second or two.
    Create {
        /// viewer, producer, worker or admin.
        #[arg(long)]
        role: dispatch::auth::Role,
        /// A name for the key, unique in the file; it appears in audit logs.
        #[arg(long)]
        name: String,
        /// The keys file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Lists the keys in FILE (name and role). Delete a key's line to revoke it.
    List {
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
}

fn keys_command(cmd: Keys) -> anyhow::Result<()> {
    match cmd {
        Keys::Create { role, name, file } => {
            let token = dispatch::auth::create_key(&file, &name, role).map_err(anyhow::Error::msg)?;
            eprintln!(
                "added {} key {name} to {}; its token (shown once, keep it secret):",
                role.as_str(),
                file.display()
            );
            println!("{token}");
        }
        Keys::List { file } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            let keys = dispatch::auth::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            for k in keys {
                println!("{}\t{}", k.name, k.role.as_str());
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    if let Some(Command::Keys(cmd)) = flags.command {
        return keys_command(cmd);
    }
    if flags.print_openapi {
        print!("{}", dispatch::gateway::OPENAPI_JSON);
        return Ok(());
    }
    let mut overrides = Vec::new();
    if let Some(a) = flags.grpc_addr {
        overrides.push(("grpc_addr".to_string(), a.to_string()));
    }
    if let Some(a) = flags.http_addr {
        overrides.push(("http_addr".to_string(), a.to_string()));
    }
    if let Some(u) = &flags.redis_url {
        overrides.push(("redis_url".to_string(), u.clone()));
    }
    if let Some(u) = &flags.nats_url {
        overrides.push(("nats_url".to_string(), u.clone()));
    }
    if let Some(f) = &flags.auth_keys {
        overrides.push(("auth.keys_file".to_string(), f.display().to_string()));
    }
    if flags.insecure {
        overrides.push(("auth.insecure".to_string(), "true".to_string()));
    }
    for (key, file) in [
        ("tls.cert_file", &flags.tls_cert),
        ("tls.key_file", &flags.tls_key),
        ("tls.client_ca_file", &flags.tls_client_ca),
    ] {
        if let Some(f) = file {
            overrides.push((key.to_string(), f.display().to_string()));
        }
    }
    if let Some(a) = flags.metrics_addr {
        overrides.push(("http.metrics_addr".to_string(), a.to_string()));
    }
    for kv in &flags.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--set wants KEY=VALUE, got {kv:?}"))?;
        overrides.push((k.to_string(), v.to_string()));
    }
    let env = std::env::vars().filter(|(k, _)| k != "DISPATCH_CONFIG" && k != "DISPATCH_LOG_JSON");
    let config = match dispatch::Config::load(flags.config.as_deref(), env, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dispatch: {e}");
            std::process::exit(2);
        }
    };
    if flags.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let _telemetry = dispatch_telemetry::init("dispatch", flags.log_json).map_err(anyhow::Error::msg)?;
    let running = dispatch::start(config).await?;
    let token = running.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    running.wait().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
