//! One relay per data directory.
//!
//! Two relays on one directory would corrupt each other's work (the second
//! empties `artifacts/tmp` under the first's uploads, both write the
//! database), so the first thing a relay does is take an exclusive lock on
//! `relay.lock` in the directory. A second one is refused with a sentence
//! naming the directory and the holder's pid, having touched nothing else.
//! The kernel drops the lock when the holder exits, however it exits.

use crate::error::RelayError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

const LOCK_FILE: &str = "relay.lock";

/// Held for as long as the relay uses the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, RelayError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| RelayError::Config(format!("cannot create the data directory {}: {e}", data_dir.display())))?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| RelayError::Config(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { "another process".to_owned() } else { format!("pid {holder}") };
                return Err(RelayError::Config(format!(
                    "the data directory {} is in use by another relay ({who}); stop it first or choose another --data-dir",
                    data_dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(RelayError::Config(format!("cannot lock {}: {e}", path.display())));
            }
        }
        // Ours now: record who holds it, for the next one's error message.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        let _ = file.sync_all();
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("in use by another relay") && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again");
    }
}
