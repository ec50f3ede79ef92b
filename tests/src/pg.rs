//! A throwaway PostgreSQL cluster for tests: `initdb` into a temp dir,
//! `pg_ctl start` on a free loopback port with its socket in that dir,
//! stopped and deleted on drop. PostgreSQL refuses to run as root, so
//! when the tests run as root (CI) the cluster runs as `nobody`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// A libpq URL of the cluster's `postgres` database, over TCP on loopback.
    pub url: String,
    as_user: Option<&'static str>,
}

/// Where PostgreSQL's server binaries are: `$PG_BIN`, else the newest
/// Debian `/usr/lib/postgresql/N/bin`, else the `PATH`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Some(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).or_else(|| {
        let out = Command::new("sh").args(["-c", "command -v initdb"]).output().ok()?;
        Some(Path::new(String::from_utf8_lossy(&out.stdout).trim()).parent()?.to_path_buf())
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid only reads the process's credentials.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PgCluster {
    /// Starts a cluster, or says why it cannot (no PostgreSQL installed).
    pub fn start() -> Result<PgCluster, String> {
        let bin = bin_dir().ok_or("PostgreSQL's server binaries are not installed (initdb not found)")?;
        let as_user = is_root().then_some("nobody");
        let dir = tempfile::Builder::new().prefix("pg-").tempdir().map_err(|e| e.to_string())?;
        if let Some(user) = as_user {
            run(Command::new("chown").args(["-R", user]).arg(dir.path()))?;
        }
        let port = free_port().map_err(|e| e.to_string())?;
        let cluster =
            PgCluster { url: format!("postgresql://postgres@127.0.0.1:{port}/postgres"), dir, bin, port, as_user };
        cluster.pg(
            "initdb",
            &["-D", &cluster.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
        )?;
        cluster.start_server()?;
        Ok(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs one of PostgreSQL's programs, as the cluster's user.
    fn pg(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        let exe = self.bin.join(program);
        let mut cmd = match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(self.dir.path());
        run(&mut cmd)
    }

    fn start_server(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.pg("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "-t", "60", "start"]).map(|_| ())
    }

    /// Stops the server (fast: sessions are cut) and starts it again.
    pub fn restart(&self) -> Result<(), String> {
        self.pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])?;
        self.start_server()
    }

    /// Runs SQL with `psql` and returns its output (one value per line).
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        let out = self.pg("psql", &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-At", "-c", sql])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// CPU seconds the whole server has used: the postmaster and its live
    /// children, plus what its ended children used (the kernel adds that
    /// to the parent when it reaps them), from `/proc`.
    pub fn cpu_seconds(&self) -> f64 {
        let pid_file = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).unwrap_or_default();
        let Some(postmaster) = pid_file.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else {
            return 0.0;
        };
        let mut ticks = 0u64;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<u64> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
                .unwrap_or_default();
            // After ')': ppid is field 4 (index 1); utime, stime, cutime, cstime 14-17 (11-14).
            let field = |i: usize| fields.get(i).copied().unwrap_or(0);
            if pid == postmaster {
                ticks += field(11) + field(12) + field(13) + field(14);
            } else if field(1) == u64::from(postmaster) {
                ticks += field(11) + field(12);
            }
        }
        ticks as f64 / clock_ticks()
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.pg("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}
