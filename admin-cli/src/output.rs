//! Readable tables, or the relay's JSON with `--json`.

use crate::client::CliError;
use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn raw(v: &Value, _json: bool) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

pub fn release(v: &Value, json: bool) {
    if json {
        return raw(v, json);
    }
    println!("release   {}", s(&v["id"]));
    println!(
        "dataset   {}/{}  version {}  (app >= {})",
        s(&v["dataset"]),
        s(&v["channel"]),
        s(&v["version"]),
        s(&v["min_app_version"])
    );
    let rollout =
        if v["state"] == "published" { format!("  rollout {}%", s(&v["rollout_percent"])) } else { String::new() };
    let mandatory = if v["mandatory"] == true { "  mandatory" } else { "" };
    println!("state     {}{rollout}{mandatory}", s(&v["state"]));
    if let Some(reason) = v["deprecated_reason"].as_str() {
        println!("reason    {reason}");
    }
    if let Some(notes) = v["notes"].as_str().filter(|n| !n.is_empty()) {
        println!("notes     {notes}");
    }
    let artifacts = v["artifacts"].as_array().cloned().unwrap_or_default();
    if artifacts.is_empty() {
        println!("artifacts none");
        return;
    }
    println!("{:<32} {:>10}  {:<64}  source", "artifact", "size", "sha256");
    for a in artifacts {
        let source = match a["source"]["kind"].as_str() {
            Some("external") => s(&a["source"]["url"]),
            _ => "uploaded".into(),
        };
        println!(
            "{:<32} {:>10}  {:<64}  {source}",
            s(&a["name"]),
            human_bytes(a["size"].as_u64().unwrap_or(0)),
            s(&a["sha256"])
        );
    }
}

pub fn releases(v: &Value, json: bool) {
    if json {
        return raw(v, json);
    }
    println!(
        "{:<36}  {:<24} {:>10}  {:<11} {:>7}  {:>9}",
        "id", "dataset/channel", "version", "state", "rollout", "artifacts"
    );
    for r in v["releases"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:<36}  {:<24} {:>10}  {:<11} {:>6}%  {:>9}",
            s(&r["id"]),
            format!("{}/{}", s(&r["dataset"]), s(&r["channel"])),
            s(&r["version"]),
            s(&r["state"]),
            s(&r["rollout_percent"]),
            r["artifacts"].as_array().map_or(0, Vec::len)
        );
    }
}

fn finding_line(f: &Value) -> String {
    let artifact = f["artifact"].as_str().map(|a| format!(" [{a}]")).unwrap_or_default();
    format!("  {:<7} {:<20} {}{artifact}", s(&f["severity"]), s(&f["rule"]), s(&f["message"]))
}

fn findings(list: &[Value]) {
    for f in list {
        println!("{}", finding_line(f));
    }
}

pub fn report(v: &Value, json: bool) {
    if json {
        return raw(v, json);
    }
    let list = v["findings"].as_array().cloned().unwrap_or_default();
    println!("{} ({} findings)", if v["valid"] == true { "valid" } else { "NOT valid" }, list.len());
    findings(&list);
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC (H. Hinnant's civil date).
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn audit(v: &Value, json: bool) {
    if json {
        return raw(v, json);
    }
    println!(
        "{:>6}  {:<19}  {:<16} {:<18} {:<8} {:<40} detail",
        "id", "at (UTC)", "actor", "action", "outcome", "target"
    );
    for e in v["entries"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:>6}  {:<19}  {:<16} {:<18} {:<8} {:<40} {}",
            s(&e["id"]),
            e["at"].as_i64().map(utc).unwrap_or_default(),
            s(&e["actor"]),
            s(&e["action"]),
            s(&e["outcome"]),
            s(&e["target"]),
            s(&e["detail"])
        );
    }
}

pub fn error(e: &CliError, json: bool) {
    if let (true, CliError::Relay { body: Some(body), .. }) = (json, e) {
        eprintln!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
        return;
    }
    eprintln!("error: {e}");
    if let CliError::Relay { body: Some(body), .. } = e
        && let Some(list) = &body.findings
    {
        for f in list.iter().filter_map(|f| serde_json::to_value(f).ok()) {
            eprintln!("{}", finding_line(&f));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_epoch_millis() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_795_622_740_013), "2026-11-25 16:05:40");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}
