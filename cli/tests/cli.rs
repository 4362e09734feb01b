//! `dispatchctl` itself, run as a process against a real stack (Redis, NATS, dispatch and a
//! worker started by the test kit).

use std::process::{Command, Output};
use std::time::Duration;

use dispatch_testkit::{Stack, eventually};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// Runs dispatchctl with DISPATCH_ADDR pointing at the stack (and `env`), without a terminal.
fn ctl(s: &Stack, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dispatchctl"));
    cmd.env("DISPATCH_ADDR", s.url())
        .env_remove("DISPATCH_TOKEN")
        .env_remove("DISPATCH_CA_CERT")
        .args(args)
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Pass: a job is created, watched to its end (every transition printed as it happens), read,
/// listed by label, cancelled and retried; queues are listed, paused and resumed; workers are
/// listed; bad input and refusals exit 1 with the reason; completions print.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_verbs_work_from_a_shell() {
    let mut s = Stack::start_with(|c| c.loops.announce_interval_ms = 200).await;
    s.spawn_builtin_worker(&[("default", 2)]);

    let created = json(&ok(ctl(
        &s,
        &[],
        &[
            "--json",
            "jobs",
            "create",
            "-q",
            "default",
            "-t",
            "noop",
            "-p",
            r#"{"x":1}"#,
            "-l",
            "env=prod",
        ],
    )));
    assert_eq!(created["created"], true);
    let id = created["job"]["id"].as_str().unwrap().to_string();
    let watched = ok(ctl(&s, &[], &["jobs", "watch", &id]));
    let states: Vec<&str> = watched.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert_eq!(states, ["QUEUED", "RUNNING", "SUCCEEDED"], "{watched}");
    let lines: Vec<Value> = ok(ctl(&s, &[], &["--json", "jobs", "watch", &id]))
        .lines()
        .map(json)
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["state"], "JOB_STATE_SUCCEEDED");
    let got = json(&ok(ctl(&s, &[], &["--json", "jobs", "get", &id])));
    assert_eq!(got["state"], "JOB_STATE_SUCCEEDED");
    assert_eq!(got["payload"], serde_json::json!({"x": 1}));
    let shown = ok(ctl(&s, &[], &["jobs", "get", &id]));
    assert!(
        shown.contains("state     SUCCEEDED") && shown.contains("env=prod"),
        "{shown}"
    );

    // Listing by label: the prod job, not the dev one.
    let other = json(&ok(ctl(
        &s,
        &[],
        &[
            "--json", "jobs", "create", "-q", "default", "-t", "noop", "-l", "env=dev", "--delay", "1h",
        ],
    )));
    let other_id = other["job"]["id"].as_str().unwrap().to_string();
    let listed = ok(ctl(&s, &[], &["jobs", "list", "-q", "default", "-l", "env=prod"]));
    assert!(listed.starts_with("ID "), "{listed}");
    assert!(listed.contains(&id) && !listed.contains(&other_id), "{listed}");
    let scheduled = json(&ok(ctl(&s, &[], &["--json", "jobs", "list", "--state", "scheduled"])));
    assert_eq!(scheduled["jobs"].as_array().unwrap().len(), 1);

    // Cancel the scheduled one, retry it, and a refusal: retrying a SUCCEEDED job.
    assert!(ok(ctl(&s, &[], &["jobs", "cancel", &other_id, "--reason", "not needed"])).contains("CANCELLED"));
    assert!(ok(ctl(&s, &[], &["jobs", "retry", &other_id])).contains("QUEUED on attempt 2"));
    let err = refused(ctl(&s, &[], &["jobs", "retry", &id]));
    assert!(err.contains("FailedPrecondition"), "{err}");

    // Queues: listed, paused (a job waits), resumed (it runs).
    let queues = ok(ctl(&s, &[], &["queues", "list"]));
    let row = queues
        .lines()
        .find(|l| l.starts_with("default "))
        .unwrap_or_else(|| panic!("{queues}"));
    assert!(row.split_whitespace().nth(4) >= Some("1"), "{queues}");
    assert!(ok(ctl(&s, &[], &["queues", "pause", "default"])).contains("queue default paused"));
    let listed = json(&ok(ctl(&s, &[], &["--json", "queues", "list"])));
    let q = listed["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .unwrap();
    assert_eq!(q["paused"], true);
    assert!(
        ok(ctl(&s, &[], &["queues", "list"]))
            .lines()
            .any(|l| l.starts_with("default ") && l.contains("yes"))
    );
    assert!(ok(ctl(&s, &[], &["queues", "resume", "default"])).contains("resumed"));

    // Workers: the test worker, with its queue.
    let workers = eventually("the worker listed", T, || async {
        let out = ok(ctl(&s, &[], &["workers", "list"]));
        out.contains("test-worker-0").then_some(out)
    })
    .await;
    assert!(workers.contains("default×2"), "{workers}");

    // Bad input: a clear reason, exit 1 (or 2 for bad usage), nothing created.
    let err = refused(ctl(&s, &[], &["jobs", "create", "-q", "bad name", "-t", "noop"]));
    assert!(err.contains("queue:"), "{err}");
    let usage = ctl(&s, &[], &["jobs", "list", "--state", "done"]);
    assert_eq!(usage.status.code(), Some(2));
    let err = refused(ctl(&s, &[("DISPATCH_ADDR", "http://127.0.0.1:1")], &["queues", "list"]));
    assert!(err.contains("cannot reach dispatch at http://127.0.0.1:1"), "{err}");
    let all = json(&ok(ctl(&s, &[], &["--json", "jobs", "list"])));
    assert_eq!(all["jobs"].as_array().unwrap().len(), 2);

    let completion = ok(ctl(&s, &[], &["completions", "bash"]));
    assert!(
        completion.contains("_dispatchctl()"),
        "{}",
        &completion[..200.min(completion.len())]
    );
    s.stop().await;
}

/// Pass: with keys on, DISPATCH_TOKEN is sent: a viewer key lists queues and may not pause
/// one; no key is told to give one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    let viewer = dispatch::auth::create_key(&file, "cli-viewer", dispatch::auth::Role::Viewer).unwrap();
    let path = file.display().to_string();
    let s = Stack::start_with(|c| c.auth.keys_file = path).await;
    ok(ctl(&s, &[("DISPATCH_TOKEN", &viewer)], &["queues", "list"]));
    let err = refused(ctl(&s, &[("DISPATCH_TOKEN", &viewer)], &["queues", "pause", "default"]));
    assert!(err.contains("PermissionDenied"), "{err}");
    let err = refused(ctl(&s, &[], &["queues", "list"]));
    assert!(err.contains("DISPATCH_TOKEN"), "{err}");
    assert!(!err.contains(&viewer));
}
