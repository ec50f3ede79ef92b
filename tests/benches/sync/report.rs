//! The bench's output: every target beside its measured figure.

pub struct Row {
    pub name: String,
    pub target: String,
    pub measured: String,
    /// `Some(true)` met, `Some(false)` missed, `None` no target (a figure only).
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    pub fn figure(&mut self, name: impl Into<String>, measured: impl Into<String>) {
        self.push(name, "-", measured, None);
    }

    pub fn target(
        &mut self,
        name: impl Into<String>,
        target: impl Into<String>,
        measured: impl Into<String>,
        met: bool,
    ) {
        self.push(name, target, measured, Some(met));
    }

    fn push(
        &mut self,
        name: impl Into<String>,
        target: impl Into<String>,
        measured: impl Into<String>,
        met: Option<bool>,
    ) {
        let row = Row { name: name.into(), target: target.into(), measured: measured.into(), met };
        println!("  {:<58} {:>14} {:>26} {}", row.name, row.target, row.measured, mark(row.met));
        self.rows.push(row);
    }

    pub fn print(&self) {
        println!("\n{:<60} {:>14} {:>26}  ", "measure", "target", "measured");
        println!("{}", "-".repeat(106));
        for r in &self.rows {
            println!("{:<60} {:>14} {:>26}  {}", r.name, r.target, r.measured, mark(r.met));
        }
        let missed = self.rows.iter().filter(|r| r.met == Some(false)).count();
        let met = self.rows.iter().filter(|r| r.met == Some(true)).count();
        println!("\ntargets met: {met}, missed: {missed}");
    }
}

fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "ok",
        Some(false) => "MISSED",
        None => "",
    }
}

pub fn kib(bytes: u64) -> String {
    if bytes < 10 * 1024 { format!("{bytes} B") } else { format!("{:.1} KiB", bytes as f64 / 1024.0) }
}

pub fn ms(d: std::time::Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{:.0} us", ms * 1000.0)
    } else if ms < 10_000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Resident and peak memory of a process, in bytes.
pub fn rss_of(pid: &str) -> (u64, u64) {
    integration_tests::admin::process_memory(pid)
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
