//! How the relay asks glibc's allocator to behave: few arenas, large
//! blocks mapped on their own, memory handed back after a burst, and small
//! per-thread caches.
//!
//! A relay's memory comes in bursts (a device uploads or reloads a year of
//! history) and must go back once the documents are evicted, or a relay
//! that served one heavy user holds that memory for good. The settings
//! below are each measured by the sync bench's `scale` section (relay peak
//! above idle, memory once documents are evicted, against a warm idle
//! relay).
//!
//! The last of them cannot be set from inside a running process: glibc
//! reads its per-thread cache size (`tcache_count`) from the
//! `GLIBC_TUNABLES` environment variable once, at start. Each thread's
//! cache keeps up to seven freed chunks of every small size for itself, and
//! `malloc_trim` cannot give back a page holding one of them: after a burst
//! those chunks sit scattered over the pages the burst used and keep them
//! resident (measured with `malloc_info`: 22 MB of arena, 21.6 MB of it
//! free, 1.35 MiB of pages still resident). With one chunk per size the
//! relay's memory after eviction is +5 % over a warm idle relay instead of
//! +13–15 %, and its CPU per synced edit is the same within this machine's
//! drift (interleaved `load` runs). So the server binaries call
//! [`run_with_tunables`] first thing, which starts the process again with
//! the setting when nobody chose one.

use std::ffi::OsStr;

/// What the relay puts in `GLIBC_TUNABLES` when the environment has none.
pub const TUNABLES: &str = "glibc.malloc.tcache_count=1";

const TUNABLES_VAR: &str = "GLIBC_TUNABLES";

/// How the allocator's start-up settings came to be, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tuning {
    /// Running with [`TUNABLES`].
    Applied,
    /// `GLIBC_TUNABLES` was set by whoever started the relay (an empty
    /// value included, which is how an operator turns this off): left as
    /// it is.
    Chosen(String),
    /// Not glibc, so there is nothing to set.
    NotGlibc,
    /// Starting again failed; the relay runs with glibc's defaults.
    Failed(String),
}

impl std::fmt::Display for Tuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tuning::Applied => write!(f, "{TUNABLES_VAR}={TUNABLES}"),
            Tuning::Chosen(v) => write!(f, "{TUNABLES_VAR}={v:?}, as set in the environment"),
            Tuning::NotGlibc => f.write_str("not glibc: allocator defaults"),
            Tuning::Failed(e) => write!(f, "glibc defaults: could not start again with {TUNABLES}: {e}"),
        }
    }
}

/// What to do, given the environment's `GLIBC_TUNABLES`: `None` means
/// start again with [`TUNABLES`].
fn decide(current: Option<&OsStr>) -> Option<Tuning> {
    match current {
        None => None,
        Some(v) if v == TUNABLES => Some(Tuning::Applied),
        Some(v) => Some(Tuning::Chosen(v.to_string_lossy().into_owned())),
    }
}

/// Starts this process again (same pid, arguments and environment, plus
/// [`TUNABLES`]) unless `GLIBC_TUNABLES` is already set; returns how the
/// allocator is tuned when it does not.
///
/// Call it first in `main`, before any thread exists (before a tokio
/// runtime is built): `exec` replaces the whole process, and nothing done
/// before it survives.
pub fn run_with_tunables() -> Tuning {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return Tuning::NotGlibc;
    }
    if let Some(tuning) = decide(std::env::var_os(TUNABLES_VAR).as_deref()) {
        return tuning;
    }
    exec_self()
}

#[cfg(unix)]
fn exec_self() -> Tuning {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    // The running binary itself, even if it was replaced on disk since.
    let error = std::process::Command::new("/proc/self/exe").arg0(arg0).args(args).env(TUNABLES_VAR, TUNABLES).exec();
    Tuning::Failed(error.to_string())
}

#[cfg(not(unix))]
fn exec_self() -> Tuning {
    Tuning::NotGlibc
}

/// Hands memory freed by dropped documents back to the kernel. glibc's
/// allocator keeps freed memory in its arenas for reuse; after a burst
/// (one heavy history synced) that would stay resident for good.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Caps glibc's malloc arenas at two. glibc gives threads their own
/// arenas (up to eight per core); documents loaded and dropped on the
/// blocking pool's threads then leave freed memory scattered over many
/// arenas, where other threads cannot reuse it (measured: a 400k history
/// synced peaked 116 MiB above idle with the default, 92 MiB with two).
/// Blocks of 256 KiB and more (a month's frame, its stored bytes, a load's
/// buffers) are mapped on their own and unmapped when freed: glibc
/// otherwise raises that threshold as large blocks are freed, and they end
/// up in the heap, where they fragment it (peak above idle 70–97 MiB
/// before, 60–79 MiB after). Called once at start; it affects arenas
/// created after.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_environment_starts_again_and_a_set_one_is_left_alone() {
        assert_eq!(decide(None), None);
        assert_eq!(decide(Some(OsStr::new(TUNABLES))), Some(Tuning::Applied));
        // Empty: the operator's way to keep glibc's defaults.
        assert_eq!(decide(Some(OsStr::new(""))), Some(Tuning::Chosen(String::new())));
        let other = "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1";
        assert_eq!(decide(Some(OsStr::new(other))), Some(Tuning::Chosen(other.into())));
    }
}
