//! `--baseline DIR`: this build's bench and another build's, run alternately, one run each on a
//! fresh stack, summarised side by side. The machine's speed drifts by a third within an hour;
//! alternating puts both builds on the same drift, and the spread says how much to trust a
//! difference.

use std::path::Path;
use std::process::Command;

use crate::{Args, stats};

/// The workload flags, spelled out (another build may have other defaults), for one run.
fn child_args(args: &Args) -> Vec<String> {
    let mut out: Vec<String> = [
        ("--jobs", args.jobs.to_string()),
        ("--single-jobs", args.single_jobs.to_string()),
        ("--batch", args.batch.to_string()),
        ("--callers", args.callers.to_string()),
        ("--single-callers", args.single_callers.to_string()),
        ("--rate", args.rate.to_string()),
        ("--latency-s", args.latency_s.to_string()),
        ("--mem-jobs", args.mem_jobs.to_string()),
        ("--worker-concurrency", args.worker_concurrency.to_string()),
        ("--workers", args.workers.to_string()),
        ("--queue", args.queue.clone()),
        ("--warmup", args.warmup.to_string()),
        ("--timeout-s", args.timeout_s.to_string()),
        ("--runs", "1".to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect();
    if args.redis_aof {
        out.push("--redis-aof".into());
    }
    if args.secure {
        out.push("--secure".into());
    }
    out
}

/// Runs one bench binary once; its output is printed, each line tagged; returns its last JSON
/// line.
fn run_once(tag: &str, bench: &Path, args: &[String]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(bench)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", bench.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        println!("[{tag}] {line}");
    }
    anyhow::ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        bench.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    stdout
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.is_object())
        })
        .ok_or_else(|| anyhow::anyhow!("{} printed no JSON line", bench.display()))
}

/// `--runs` pairs, alternating which build goes first; prints each run, then the medians and
/// spreads side by side, then one JSON line `{"this": medians, "baseline": medians}`.
pub fn alternate(args: &Args, dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.grpc_url.is_none(),
        "--baseline starts its own stacks: drop --grpc-url"
    );
    let base = dir.join("bench");
    anyhow::ensure!(
        base.is_file() && dir.join("dispatch").is_file() && dir.join("worker").is_file(),
        "{} must hold the other build's bench, dispatch and worker binaries (tools/bench.sh --baseline-rev REV builds them)",
        dir.display()
    );
    let this = std::env::current_exe()?;
    let child = child_args(args);
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..args.runs.max(1) {
        println!("== pair {} of {}", i + 1, args.runs.max(1));
        let order: [(bool, &Path); 2] = if i % 2 == 0 {
            [(true, &this), (false, &base)]
        } else {
            [(false, &base), (true, &this)]
        };
        for (is_this, bench) in order {
            let tag = if is_this { "this" } else { "baseline" };
            let json = run_once(tag, bench, &child)?;
            if is_this { &mut mine } else { &mut theirs }.push(json);
        }
    }
    stats::print_spread(
        &format!("{} runs each, alternating", mine.len()),
        &[("this build", &mine), ("baseline", &theirs)],
    );
    println!(
        "{}",
        serde_json::json!({"this": stats::median_json(&mine), "baseline": stats::median_json(&theirs)})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_workload_is_spelled_out_for_the_other_build() {
        let args = Args::parse_from(["bench", "--jobs", "7", "--baseline", "/x", "--redis-aof"]);
        let child = child_args(&args);
        let flag = |f: &str| child.iter().position(|a| a == f).map(|i| child[i + 1].as_str());
        assert_eq!(flag("--jobs"), Some("7"));
        assert_eq!(flag("--runs"), Some("1"));
        assert_eq!(flag("--single-jobs"), Some("40000"));
        assert!(child.iter().any(|a| a == "--redis-aof"));
        assert!(!child.iter().any(|a| a == "--baseline"));
    }
}
