//! The `worker` binary's command line: bad flags and unreachable servers end with one clear
//! line and a non-zero status, never a stack trace.

use std::process::Command;
use std::time::{Duration, Instant};

fn worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_worker"));
    // Even with backtraces asked for, a user error is one line.
    c.env("RUST_BACKTRACE", "1").env("RUST_LOG", "warn");
    c
}

/// Pass: `--queues default=abc` exits 1 saying which part is wrong, without a backtrace.
#[test]
fn a_bad_concurrency_is_one_line() {
    let out = worker().args(["--queues", "default=abc"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bad concurrency in \"default=abc\""), "{err}");
    assert!(!err.contains("backtrace"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Pass: with nothing listening at the NATS address, the worker warns naming it, then gives up
/// after `--connect-timeout-s` with a message naming it.
#[test]
fn an_unreachable_nats_is_said_and_given_up_on() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let t0 = Instant::now();
    let out = worker()
        .args(["--nats-url", &url, "--connect-timeout-s", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("NATS at {url} not reachable after 2 s")), "{err}");
    assert!(log.contains("NATS not reachable yet") && log.contains(&url), "{log}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "gave up after {:?}",
        t0.elapsed()
    );
}
