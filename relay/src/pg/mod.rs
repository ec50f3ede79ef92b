//! One connection to PostgreSQL per relay, shared by the document storage
//! ([`crate::storage::PgStorage`]) and the release registry
//! ([`crate::release::repository::PgReleases`]).
//!
//! The relay calls both from blocking threads and expects synchronous
//! calls; the driver is asynchronous. Each call runs on this connection's
//! own small runtime and the caller waits on a channel, so a call is safe
//! from any thread (a `block_on` on the relay's runtime would panic if ever
//! called from one of its workers).

pub mod schema;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::future::Future;
use tokio_postgres::NoTls;

/// Connections the pool opens at most.
const POOL_SIZE: usize = 16;

/// What went wrong, in the terms the storage errors need.
#[derive(Debug)]
pub enum StorageErrorKind {
    Other,
    /// A unique constraint refused the write (SQLSTATE 23505).
    Unique,
    /// A trigger refused the write (`RAISE EXCEPTION`, SQLSTATE P0001).
    Refused,
    SchemaTooNew {
        found: i64,
        supported: i64,
    },
    Migration,
}

#[derive(Debug)]
pub struct PgError {
    pub kind: StorageErrorKind,
    pub text: String,
}

impl PgError {
    pub fn from_display(e: impl std::fmt::Display) -> PgError {
        PgError { kind: StorageErrorKind::Other, text: e.to_string() }
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        let kind = match e.code() {
            Some(code) if *code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => StorageErrorKind::Unique,
            Some(code) if *code == tokio_postgres::error::SqlState::RAISE_EXCEPTION => StorageErrorKind::Refused,
            _ => StorageErrorKind::Other,
        };
        // A server error's own message, without the driver's "db error: " prefix.
        let text = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string());
        PgError { kind, text }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> PgError {
        PgError::from_display(e)
    }
}

pub struct Pg {
    pool: Pool,
    /// Runs the driver's connections; `None` once dropped.
    runtime: Option<tokio::runtime::Runtime>,
    pub config: tokio_postgres::Config,
}

impl Pg {
    /// Connects to `url` (a libpq URL or key=value string) and migrates the
    /// schema. Only loopback hosts and Unix sockets: TLS to PostgreSQL is
    /// not built yet, and a password must not cross a network in clear.
    pub fn connect(url: &str) -> Result<Pg, PgError> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| PgError::from_display(format!("database URL: {e}")))?;
        check_loopback(&config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("relay-postgres")
            .enable_all()
            .build()
            .map_err(PgError::from_display)?;
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(PgError::from_display)?;
        runtime.block_on(schema::migrate(&pool))?;
        Ok(Pg { pool, runtime: Some(runtime), config })
    }

    /// Runs `f` on the connection's runtime and waits for it from any thread.
    pub fn run<T, F>(&self, f: impl FnOnce(Pool) -> F) -> Result<T, PgError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, PgError>> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().ok_or_else(|| PgError::from_display("database connection closed"))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(self.pool.clone());
        runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| PgError::from_display("database runtime stopped"))?
    }

    /// The pool, for tasks of their own on this runtime.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// Spawns a task on the connection's runtime (a listener, a writer).
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        self.runtime.as_ref().map(|r| drop(r.spawn(task))).is_some()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // The relay may drop its storage on one of its async workers, where
        // a runtime must not block on its own shutdown.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Refuses hosts that are not loopback addresses or Unix sockets.
fn check_loopback(config: &tokio_postgres::Config) -> Result<(), PgError> {
    use tokio_postgres::config::Host;
    if config.get_hosts().is_empty() {
        return Err(PgError::from_display("database URL names no host"));
    }
    for host in config.get_hosts() {
        let ok = match host {
            Host::Tcp(name) => {
                name == "localhost" || name.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
            }
            Host::Unix(_) => true,
        };
        if !ok {
            return Err(PgError::from_display(format!(
                "database host {host:?} is not a loopback address or a Unix socket; TLS to PostgreSQL is not supported yet"
            )));
        }
    }
    Ok(())
}

/// A read-only transaction that sees one snapshot of the database.
pub async fn read_snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, PgError> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}
