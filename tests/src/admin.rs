//! Admin API calls the tests and benches share.

/// Creates a draft release; returns its id.
pub async fn create(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    (dataset, channel, version): (&str, &str, &str),
) -> String {
    let created: serde_json::Value = http
        .post(format!("{base}/admin/releases"))
        .bearer_auth(token)
        .json(&serde_json::json!({"dataset": dataset, "channel": channel, "version": version,
            "min_app_version": "1.0.0", "notes": "test"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    created["id"].as_str().expect("release id").to_owned()
}

/// Publishes a release at 100 %.
pub async fn publish_draft(http: &reqwest::Client, base: &str, token: &str, id: &str) {
    let resp = http
        .post(format!("{base}/admin/releases/{id}/publish"))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("publish");
    assert!(resp.status().is_success(), "publish: {}", resp.status());
}

/// Creates, uploads `files` to, and publishes (at 100 %) a release; returns its id.
pub async fn publish(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    release: (&str, &str, &str),
    files: &[(&str, Vec<u8>)],
) -> String {
    let id = create(http, base, token, release).await;
    for (name, bytes) in files {
        let resp = http
            .put(format!("{base}/admin/releases/{id}/artifacts/{name}"))
            .bearer_auth(token)
            .body(bytes.clone())
            .send()
            .await
            .expect("upload");
        assert!(resp.status().is_success(), "upload {name}: {}", resp.status());
    }
    publish_draft(http, base, token, &id).await;
    id
}

/// Resident and peak memory of a process (`self` or a pid), from /proc, in bytes.
pub fn process_memory(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) a process has used, from the kernel's accounting
/// (`/proc/PID/stat`, fields 14 and 15, in clock ticks).
pub fn process_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let total = ticks(11) + ticks(12);
    total as f64 / clock_ticks_per_second()
}

/// CPU seconds used by the live threads of process `pid`, in nanoseconds
/// of resolution (each thread's `schedstat`), where [`process_cpu_seconds`]
/// counts in clock ticks (10 ms): for phases of a few milliseconds of CPU.
/// Threads that end between two readings take their time with them, so a
/// difference is only meaningful over a window in which none ends.
pub fn process_cpu_seconds_fine(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    let nanos: u64 = tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum();
    nanos as f64 / 1e9
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}
