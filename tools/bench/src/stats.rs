//! Percentiles and rates.

/// The `p`-th percentile (0..=100) of `sorted` by nearest rank; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p90, p99 and max of `values` (sorted here).
pub fn summary(mut values: Vec<f64>) -> [f64; 4] {
    values.sort_by(f64::total_cmp);
    [
        percentile(&values, 50.0),
        percentile(&values, 90.0),
        percentile(&values, 99.0),
        values.last().copied().unwrap_or(0.0),
    ]
}

/// Events per second; 0 for an empty interval.
pub fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// The median of each numeric field across `runs` (objects with the same keys); a field that
/// is not a number in every run is taken from the first.
pub fn median_json(runs: &[serde_json::Value]) -> serde_json::Value {
    let Some(serde_json::Value::Object(first)) = runs.first() else {
        return serde_json::Value::Null;
    };
    let out = first
        .iter()
        .map(|(k, v)| {
            let all_numbers = runs.iter().all(|r| r.get(k).and_then(|x| x.as_f64()).is_some());
            match spread(runs, k) {
                Some((m, _, _)) if all_numbers => (k.clone(), serde_json::json!(m)),
                _ => (k.clone(), v.clone()),
            }
        })
        .collect();
    serde_json::Value::Object(out)
}

/// The figures the spread table shows: JSON key, label.
const FIGURES: &[(&str, &str)] = &[
    ("e2e_jobs_s", "end to end, batched (jobs/s)"),
    ("enqueue_jobs_s", "enqueue, CreateJobs (jobs/s)"),
    ("single_e2e_jobs_s", "end to end, single CreateJob (jobs/s)"),
    ("lat_start_p50_ms", "enqueue -> start p50 (ms)"),
    ("lat_start_p99_ms", "enqueue -> start p99 (ms)"),
    ("lat_done_p99_ms", "enqueue -> succeeded p99 (ms)"),
    ("lat_cpu_system_us", "CPU per job at that rate (µs)"),
    ("redis_bytes_per_job", "Redis bytes per queued job"),
    ("rss_mb", "dispatch peak RSS (MiB)"),
    ("cpu_system_us", "CPU per job, all processes (µs)"),
    ("cpu_redis_us", "  redis-server"),
    ("cpu_nats_us", "  nats-server"),
    ("cpu_dispatch_us", "  dispatch"),
    ("cpu_worker_us", "  worker"),
    ("cpu_bench_us", "  the bench itself (apart)"),
];

/// Median, min and max of field `key` over `runs`; `None` when no run has it as a number.
pub fn spread(runs: &[serde_json::Value], key: &str) -> Option<(f64, f64, f64)> {
    let mut xs: Vec<f64> = runs.iter().filter_map(|r| r.get(key)?.as_f64()).collect();
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let m = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    Some((m, xs[0], xs[n - 1]))
}

/// Prints, per figure, "median (min–max)" of each set of runs in a column.
pub fn print_spread(title: &str, sets: &[(&str, &[serde_json::Value])]) {
    println!("median (min-max) of {title}");
    let mut header = format!("  {:<40}", "");
    for (name, _) in sets {
        header.push_str(&format!(" {name:>24}"));
    }
    println!("{header}");
    for (key, label) in FIGURES {
        let cells: Vec<Option<(f64, f64, f64)>> = sets.iter().map(|(_, runs)| spread(runs, key)).collect();
        if cells.iter().all(Option::is_none) {
            continue;
        }
        let mut line = format!("  {label:<40}");
        for c in cells {
            let d = if key.ends_with("_ms") { 1 } else { 0 };
            let cell = match c {
                Some((m, lo, hi)) => format!("{m:.d$} ({lo:.d$}-{hi:.d$})"),
                None => "-".into(),
            };
            line.push_str(&format!(" {cell:>24}"));
        }
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(summary(vec![3.0, 1.0, 2.0]), [2.0, 3.0, 3.0, 3.0]);
        assert_eq!(rate(100, 0.5), 200.0);
        assert_eq!(rate(1, 0.0), 0.0);
    }

    #[test]
    fn spread_of_a_field() {
        let runs = [
            serde_json::json!({"e2e": 3.0}),
            serde_json::json!({"e2e": 9.0}),
            serde_json::json!({"e2e": 1.0}),
            serde_json::json!({"other": 1.0}),
        ];
        assert_eq!(spread(&runs, "e2e"), Some((3.0, 1.0, 9.0)));
        assert_eq!(spread(&runs, "nope"), None);
    }

    #[test]
    fn median_of_runs_per_field() {
        let runs = [
            serde_json::json!({"e2e": 3.0, "p99": 7.0, "rss": null}),
            serde_json::json!({"e2e": 1.0, "p99": 4.0, "rss": null}),
            serde_json::json!({"e2e": 2.0, "p99": 3.0, "rss": null}),
        ];
        assert_eq!(
            median_json(&runs),
            serde_json::json!({"e2e": 2.0, "p99": 4.0, "rss": null})
        );
        assert_eq!(
            median_json(&runs[..2]),
            serde_json::json!({"e2e": 2.0, "p99": 5.5, "rss": null})
        );
    }
}
