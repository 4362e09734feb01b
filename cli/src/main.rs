//! `dispatchctl`: jobs, queues and workers from a shell. Tables for people, `--json` (proto3
//! JSON, one document per result, one line per event for `watch`) for scripts.
//!
//! Talks gRPC to `--addr` / `DISPATCH_ADDR` with the API key of `--token` / `DISPATCH_TOKEN`;
//! `https://` addresses trust the system's roots or `--ca-cert` / `DISPATCH_CA_CERT`.
//! Exit status: 0 done, 1 refused or failed (the reason on stderr), 2 bad usage.

mod table;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use dispatch_client::pb::{self, JobState};
use dispatch_client::{Client, json};
use futures::StreamExt;
use serde_json::Value;

use table::Table;

#[derive(Parser)]
#[command(
    name = "dispatchctl",
    version,
    about = "Jobs, queues and workers of a Dispatch server"
)]
struct Cli {
    /// dispatch's gRPC address.
    #[arg(long, global = true, env = "DISPATCH_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// API key, when dispatch has authentication on.
    #[arg(long, global = true, env = "DISPATCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// address.
    #[arg(long, global = true, env = "DISPATCH_CA_CERT")]
    ca_cert: Option<String>,
    /// Print proto3 JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, read, list, follow, cancel and retry jobs.
    #[command(subcommand)]
    Jobs(Jobs),
    /// List queues; pause and resume them.
    #[command(subcommand)]
    Queues(Queues),
    /// The workers connected now.
    #[command(subcommand)]
    Workers(Workers),
    /// Prints a shell completion script: `dispatchctl completions bash > /etc/bash_completion.d/dispatchctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum Jobs {
    /// Creates a job.
    Create(CreateArgs),
    /// Shows one job.
    Get { id: String },
    /// Lists jobs, oldest first.
    List(ListArgs),
    /// Prints each transition of a job as it happens (its history first); ends with the job.
    Watch { id: String },
    /// Cancels a job (a running one through its worker's next heartbeat).
    Cancel {
        id: String,
        /// Why, recorded as the job's error.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Runs a FAILED or CANCELLED job again.
    Retry { id: String },
}

#[derive(Args)]
struct CreateArgs {
    /// Queue to run it on.
    #[arg(long, short)]
    queue: String,
    /// Job type (selects the worker's handler).
    #[arg(long = "type", short = 't')]
    job_type: String,
    /// Payload as JSON.
    #[arg(long, short, default_value = "null")]
    payload: String,
    /// Attempts in all.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Run after this long, e.g. 30s, 5m, 2h.
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Per-attempt timeout, e.g. 90s.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// A label, key=value (repeat for more).
    #[arg(long = "label", short = 'l', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Idempotency key: the same key on the same queue returns the first job.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Args)]
struct ListArgs {
    /// Only this queue.
    #[arg(long, short)]
    queue: Option<String>,
    /// Only this state: scheduled, queued, running, succeeded, failed, cancelled.
    #[arg(long, short, value_parser = parse_state)]
    state: Option<JobState>,
    /// Only this job type.
    #[arg(long = "type", short = 't')]
    job_type: Option<String>,
    /// Only jobs with this label, key=value (repeat: all must match).
    #[arg(long = "label", short = 'l')]
    labels: Vec<String>,
    /// Most jobs to print.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

#[derive(Subcommand)]
enum Queues {
    /// Every queue with its counts per state.
    List,
    /// Pauses a queue: its jobs wait, QUEUED, until it is resumed (admin key).
    Pause { name: String },
    /// Resumes a paused queue (admin key).
    Resume { name: String },
}

#[derive(Subcommand)]
enum Workers {
    /// The workers that announced themselves in the last few seconds.
    List,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "dispatchctl", &mut std::io::stdout());
        return;
    }
    let addr = cli.addr.clone();
    if let Err(e) = run(cli).await {
        eprintln!("dispatchctl: {}", describe(&e, &addr));
        std::process::exit(1);
    }
}

/// An error in one paragraph: a gRPC status as its message and field violations.
fn describe(e: &anyhow::Error, addr: &str) -> String {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        let mut out = format!("{} ({:?})", s.message(), s.code());
        for (field, why) in dispatch_client::field_violations(s) {
            out.push_str(&format!("\n  {field}: {why}"));
        }
        if s.code() == tonic::Code::Unavailable {
            out.push_str(&format!(
                "\n  cannot reach dispatch at {addr}: is it running there (--addr, DISPATCH_ADDR)?"
            ));
        }
        if s.code() == tonic::Code::Unauthenticated {
            out.push_str("\n  give an API key: --token or DISPATCH_TOKEN");
        }
        return out;
    }
    format!("{e:#}")
}

use dispatch_client::tonic;

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let client = match (&cli.ca_cert, cli.addr.starts_with("https://")) {
        (Some(ca), _) => {
            let tls = dispatch_client::Tls::new().ca_file(ca)?;
            Client::connect_lazy_tls(cli.addr.clone(), &tls)
        }
        (None, true) => Client::connect_lazy_tls(cli.addr.clone(), &Default::default()),
        (None, false) => Client::connect_lazy(cli.addr.clone()),
    }
    .with_context(|| format!("bad address {:?}", cli.addr))?;
    Ok(match &cli.token {
        Some(t) if !t.is_empty() => client.with_token(t)?,
        _ => client,
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = connect(&cli).await?;
    let mut jobs = client.jobs();
    let out = Output { json: cli.json };
    match cli.command {
        Command::Jobs(Jobs::Create(a)) => {
            let payload: Value = serde_json::from_str(&a.payload).context("--payload is not JSON")?;
            let options = pb::JobOptions {
                max_attempts: a.max_attempts.unwrap_or(0),
                delay: a.delay.map(pb_duration),
                timeout: a.timeout.map(pb_duration),
                labels: a.labels.into_iter().collect(),
                idempotency_key: a.idempotency_key.unwrap_or_default(),
                ..Default::default()
            };
            let r = jobs
                .create_job(pb::CreateJobRequest {
                    queue: a.queue,
                    r#type: a.job_type,
                    payload: Some(json::to_proto(&payload)),
                    options: Some(options),
                })
                .await?
                .into_inner();
            if out.json {
                return out.print(&r);
            }
            let job = r.job.unwrap_or_default();
            println!(
                "{} job {} on queue {}: {}",
                if r.created {
                    "created"
                } else {
                    "existing (idempotency key)"
                },
                job.id,
                job.queue,
                state(job.state)
            );
        }
        Command::Jobs(Jobs::Get { id }) => {
            let job = client.get(&id).await?;
            if out.json {
                return out.print(&job);
            }
            print_job(&job);
        }
        Command::Jobs(Jobs::List(a)) => {
            let mut shown = Vec::new();
            let mut token = String::new();
            while shown.len() < a.limit {
                let page = jobs
                    .list_jobs(pb::ListJobsRequest {
                        queue: a.queue.clone().unwrap_or_default(),
                        state: a.state.map(|s| s as i32).unwrap_or(0),
                        page_size: (a.limit - shown.len()).min(1000) as u32,
                        page_token: token,
                        r#type: a.job_type.clone().unwrap_or_default(),
                        labels: a.labels.clone(),
                    })
                    .await?
                    .into_inner();
                shown.extend(page.jobs);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            shown.truncate(a.limit);
            if out.json {
                return out.print(&pb::ListJobsResponse {
                    jobs: shown,
                    next_page_token: token,
                });
            }
            let mut t = Table::new(["ID", "QUEUE", "TYPE", "STATE", "ATTEMPT", "CREATED", "ERROR"]);
            for j in &shown {
                t.row([
                    j.id.clone(),
                    j.queue.clone(),
                    j.r#type.clone(),
                    state(j.state),
                    format!("{}/{}", j.attempt, j.max_attempts),
                    time(j.created_at.as_ref()),
                    j.error.as_ref().map(|e| clip(&e.message, 60)).unwrap_or_default(),
                ]);
            }
            t.print_or("no jobs");
            if !token.is_empty() {
                println!("(more: raise --limit)");
            }
        }
        Command::Jobs(Jobs::Watch { id }) => {
            let events = client.watch(&id).await?;
            futures::pin_mut!(events);
            while let Some(e) = events.next().await {
                let e = e?;
                if out.json {
                    println!("{}", to_json(&e)?);
                } else {
                    let mut line = format!(
                        "{}  #{:<3} {:<10} attempt {}",
                        e.timestamp.as_ref().map(rfc3339).unwrap_or_default(),
                        e.sequence,
                        state(e.state),
                        e.attempt
                    );
                    if !e.worker_id.is_empty() {
                        line.push_str(&format!("  worker {}", e.worker_id));
                    }
                    if !e.error.is_empty() {
                        line.push_str(&format!("  error: {}", e.error));
                    }
                    println!("{line}");
                }
            }
        }
        Command::Jobs(Jobs::Cancel { id, reason }) => {
            let job = client.cancel(&id, &reason).await?;
            if out.json {
                return out.print(&job);
            }
            if job.cancel_requested && job.state == JobState::Running as i32 {
                println!("job {id} is running: its worker is asked to stop");
            } else {
                println!("job {id}: {}", state(job.state));
            }
        }
        Command::Jobs(Jobs::Retry { id }) => {
            let job = client.retry(&id).await?;
            if out.json {
                return out.print(&job);
            }
            println!("job {id}: {} on attempt {}", state(job.state), job.attempt);
        }
        Command::Queues(Queues::List) => {
            let r = jobs.list_queues(pb::ListQueuesRequest {}).await?.into_inner();
            if out.json {
                return out.print(&r);
            }
            let mut t = Table::new([
                "QUEUE",
                "QUEUED",
                "SCHEDULED",
                "RUNNING",
                "SUCCEEDED",
                "FAILED",
                "CANCELLED",
                "PAUSED",
                "OLDEST QUEUED",
            ]);
            for q in &r.queues {
                t.row([
                    q.name.clone(),
                    q.depth.to_string(),
                    q.scheduled.to_string(),
                    q.running.to_string(),
                    q.succeeded.to_string(),
                    q.failed.to_string(),
                    q.cancelled.to_string(),
                    if q.paused { "yes".into() } else { String::new() },
                    q.oldest_queued_created_at.as_ref().map(age).unwrap_or_default(),
                ]);
            }
            t.print_or("no queues yet");
        }
        Command::Queues(Queues::Pause { name }) => {
            let r = jobs
                .pause_queue(pb::PauseQueueRequest { name: name.clone() })
                .await?
                .into_inner();
            if out.json {
                return out.print(&r);
            }
            let depth = r.queue.map(|q| q.depth).unwrap_or(0);
            println!("queue {name} paused ({depth} queued job(s) wait until it is resumed)");
        }
        Command::Queues(Queues::Resume { name }) => {
            let r = jobs
                .resume_queue(pb::ResumeQueueRequest { name: name.clone() })
                .await?
                .into_inner();
            if out.json {
                return out.print(&r);
            }
            println!("queue {name} resumed");
        }
        Command::Workers(Workers::List) => {
            let r = jobs.list_workers(pb::ListWorkersRequest {}).await?.into_inner();
            if out.json {
                return out.print(&r);
            }
            let mut t = Table::new(["WORKER", "QUEUES", "IN FLIGHT", "HOST", "VERSION", "LAST SEEN"]);
            for w in &r.workers {
                let mut queues: Vec<String> = w.queues.iter().map(|(q, c)| format!("{q}×{c}")).collect();
                queues.sort();
                t.row([
                    w.worker_id.clone(),
                    queues.join(","),
                    w.in_flight.to_string(),
                    w.hostname.clone(),
                    w.version.clone(),
                    w.last_seen.as_ref().map(age).unwrap_or_default(),
                ]);
            }
            t.print_or("no workers connected");
        }
        Command::Completions { .. } => unreachable!("handled before connecting"),
    }
    Ok(())
}

struct Output {
    json: bool,
}

impl Output {
    fn print<T: serde::Serialize>(&self, msg: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(&to_json(msg)?)?);
        Ok(())
    }
}

/// Proto3 JSON, integers printed as integers (as the REST gateway prints them).
fn to_json<T: serde::Serialize>(msg: &T) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(msg)?;
    json::normalize_numbers(&mut v);
    Ok(v)
}

fn print_job(j: &pb::Job) {
    let mut rows: Vec<(&str, String)> = vec![
        ("id", j.id.clone()),
        ("queue", j.queue.clone()),
        ("type", j.r#type.clone()),
        ("state", state(j.state)),
        ("attempt", format!("{} of {}", j.attempt, j.max_attempts)),
        ("created", time(j.created_at.as_ref())),
        ("updated", time(j.updated_at.as_ref())),
    ];
    if let Some(t) = &j.started_at {
        rows.push(("started", time(Some(t))));
    }
    if let Some(t) = &j.finished_at {
        rows.push(("finished", time(Some(t))));
    }
    if !j.labels.is_empty() {
        let mut labels: Vec<String> = j.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        rows.push(("labels", labels.join(", ")));
    }
    if let Some(l) = &j.lease {
        rows.push(("worker", l.worker_id.clone()));
    }
    if j.cancel_requested {
        rows.push(("cancel", "requested".into()));
    }
    if !j.trace_id.is_empty() {
        rows.push(("trace", j.trace_id.clone()));
    }
    rows.push(("payload", json::from_proto(j.payload.as_ref()).to_string()));
    if j.progress.is_some() {
        rows.push(("progress", json::from_proto(j.progress.as_ref()).to_string()));
    }
    if j.result.is_some() {
        rows.push(("result", json::from_proto(j.result.as_ref()).to_string()));
    }
    if let Some(e) = &j.error {
        rows.push(("error", format!("{} (attempt {})", e.message, e.attempt)));
    }
    for (k, v) in rows {
        println!("{k:<9} {v}");
    }
}

fn state(v: i32) -> String {
    JobState::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_").to_string())
        .unwrap_or_else(|_| v.to_string())
}

fn time(t: Option<&pbjson_types::Timestamp>) -> String {
    t.map(|t| format!("{} ({})", rfc3339(t), age(t))).unwrap_or_default()
}

fn rfc3339(t: &pbjson_types::Timestamp) -> String {
    // pbjson-types prints a Timestamp as RFC 3339 through serde.
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// "12s ago", "3m ago", "2h ago", "4d ago".
fn age(t: &pbjson_types::Timestamp) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let s = now - t.seconds;
    match s {
        i64::MIN..0 => "just now".into(),
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

fn pb_duration(d: Duration) -> pbjson_types::Duration {
    pbjson_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// `500ms`, `30s`, `5m`, `2h`, `1d`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 2h"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration like 30s, 5m or 2h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

fn parse_state(s: &str) -> Result<JobState, String> {
    let name = format!(
        "JOB_STATE_{}",
        s.trim().to_ascii_uppercase().trim_start_matches("JOB_STATE_")
    );
    JobState::from_str_name(&name)
        .filter(|s| *s != JobState::Unspecified)
        .ok_or_else(|| format!("{s:?} is not a state: scheduled, queued, running, succeeded, failed or cancelled"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_labels_and_states_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(parse_label("env=prod"), Ok(("env".into(), "prod".into())));
        assert_eq!(parse_label("k="), Ok(("k".into(), String::new())));
        assert!(parse_label("=v").is_err() && parse_label("nope").is_err());
        assert_eq!(parse_state("failed"), Ok(JobState::Failed));
        assert_eq!(parse_state("JOB_STATE_QUEUED"), Ok(JobState::Queued));
        assert!(parse_state("unspecified").is_err() && parse_state("done").is_err());
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
