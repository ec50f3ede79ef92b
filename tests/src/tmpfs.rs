//! A size-limited tmpfs, for tests that need a real "disk full" (ENOSPC).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted when dropped.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path` (created). Needs root (CI runs as
    /// root). Returns why not otherwise; the caller decides whether that
    /// skips the test (a developer machine) or fails it (`CI` set).
    pub fn mount(path: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }

    /// Fills the file system with a file until the kernel says ENOSPC;
    /// removing the returned path gives the space back.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let Ok(mut f) = std::fs::File::create(&filler) else { return filler };
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A tmpfs for a test, or `None` when this machine cannot mount one and
/// this is not CI (where it must).
pub fn tmpfs_or_skip(path: &Path, bytes: u64) -> Option<Tmpfs> {
    match Tmpfs::mount(path, bytes) {
        Ok(t) => Some(t),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: this test needs a size-limited tmpfs ({e}); run as root");
            None
        }
        Err(e) => panic!("CI must be able to mount a tmpfs: {e}"),
    }
}
