//! `relay-admin`: drive a dataset release from nothing to devices and back
//! without writing curl by hand. Every subcommand is one admin endpoint.

mod client;
mod output;

use clap::{Parser, Subcommand};
use client::{CliError, Client};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(version, about = "Operate the relay's dataset release registry")]
struct Cli {
    /// The relay's base URL.
    #[arg(long, env = "RELAY_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin token (see the relay's --admin-token).
    #[arg(long, env = "RELAY_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// A CA certificate (PEM) to trust for an https:// relay, besides the
    /// web's roots (an operator's private CA).
    #[arg(long, env = "RELAY_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Print the relay's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a draft release.
    Create {
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        channel: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        min_app_version: String,
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// Upload a file as an artifact (streamed, with a progress bar).
    Attach {
        release: String,
        file: PathBuf,
        /// Artifact name (default: the file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Attach an artifact hosted elsewhere, by URL, SHA-256 and size.
    AttachUrl {
        release: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        url: String,
        #[arg(long)]
        sha256: String,
        #[arg(long)]
        size: u64,
    },
    /// Remove an artifact from a draft.
    Detach { release: String, name: String },
    /// Run every validation rule and list the findings.
    Validate { release: String },
    /// Publish (refused with the findings unless validation passes).
    Publish {
        release: String,
        /// Share of devices offered it at first (0 to 100).
        #[arg(long, default_value_t = 100, value_parser = percent)]
        rollout: u8,
        /// Devices on the channel may not keep an older version.
        #[arg(long)]
        mandatory: bool,
    },
    /// Change a published release's rollout: 0 pauses, 100 completes.
    Rollout {
        release: String,
        /// 0 to 100.
        #[arg(value_parser = percent)]
        percent: u8,
    },
    /// Deprecate a published release.
    Deprecate {
        release: String,
        #[arg(long)]
        reason: String,
    },
    /// List releases.
    List {
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        channel: Option<String>,
    },
    /// Show one release with its artifacts.
    Show { release: String },
    /// Read the audit log, newest first.
    Audit {
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Set the artifacts every release of a dataset must have.
    Dataset {
        dataset: String,
        #[arg(long = "require")]
        required: Vec<String>,
    },
}

/// A rollout share: a whole number between 0 and 100.
fn percent(text: &str) -> Result<u8, String> {
    match text.trim().parse::<u32>() {
        Ok(n) if n <= 100 => Ok(n as u8),
        _ => Err(format!("`{text}` is not a percentage: give a whole number between 0 and 100")),
    }
}

/// `relay-admin list | head`: when the reader goes away, stop quietly like
/// other Unix tools instead of panicking on a broken pipe.
fn quiet_on_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE at startup, before
    // any thread exists; no handler runs our code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let client = match Client::new(&cli.url, &cli.token, cli.ca_cert.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            output::error(&e, cli.json);
            return ExitCode::FAILURE;
        }
    };
    match run(&client, cli.command, cli.json).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::error(&e, cli.json);
            ExitCode::FAILURE
        }
    }
}

async fn run(client: &Client, command: Command, json: bool) -> Result<(), CliError> {
    use serde_json::json;
    let show_release = |v: serde_json::Value| output::release(&v, json);
    match command {
        Command::Create { dataset, channel, version, min_app_version, notes } => show_release(
            client
                .post(
                    "/admin/releases",
                    json!({"dataset": dataset, "channel": channel, "version": version,
                           "min_app_version": min_app_version, "notes": notes}),
                )
                .await?,
        ),
        Command::Attach { release, file, name } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| CliError::Usage(format!("{} has no file name; pass --name", file.display())))?,
            };
            show_release(client.upload(&release, &name, &file, !json).await?)
        }
        Command::AttachUrl { release, name, url, sha256, size } => show_release(
            client
                .post(
                    &format!("/admin/releases/{}/artifacts", client::segment(&release)),
                    json!({"name": name, "url": url, "sha256": sha256, "size": size}),
                )
                .await?,
        ),
        Command::Detach { release, name } => show_release(
            client
                .delete(&format!("/admin/releases/{}/artifacts/{}", client::segment(&release), client::segment(&name)))
                .await?,
        ),
        Command::Validate { release } => {
            let report =
                client.post(&format!("/admin/releases/{}/validate", client::segment(&release)), json!({})).await?;
            output::report(&report, json);
            if report["valid"] == false {
                return Err(CliError::Failed("the release does not pass validation".into()));
            }
        }
        Command::Publish { release, rollout, mandatory } => show_release(
            client
                .post(
                    &format!("/admin/releases/{}/publish", client::segment(&release)),
                    json!({"rollout_percent": rollout, "mandatory": mandatory}),
                )
                .await?,
        ),
        Command::Rollout { release, percent } => show_release(
            client
                .post(&format!("/admin/releases/{}/rollout", client::segment(&release)), json!({"percent": percent}))
                .await?,
        ),
        Command::Deprecate { release, reason } => show_release(
            client
                .post(&format!("/admin/releases/{}/deprecate", client::segment(&release)), json!({"reason": reason}))
                .await?,
        ),
        Command::List { dataset, channel } => {
            let mut query = Vec::new();
            if let Some(d) = dataset {
                query.push(("dataset", d));
            }
            if let Some(c) = channel {
                query.push(("channel", c));
            }
            output::releases(&client.get("/admin/releases", &query).await?, json);
        }
        Command::Show { release } => {
            show_release(client.get(&format!("/admin/releases/{}", client::segment(&release)), &[]).await?)
        }
        Command::Audit { target, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(t) = target {
                query.push(("target", t));
            }
            output::audit(&client.get("/admin/audit", &query).await?, json);
        }
        Command::Dataset { dataset, required } => {
            let v = client
                .put(&format!("/admin/datasets/{}", client::segment(&dataset)), json!({"required_artifacts": required}))
                .await?;
            output::raw(&v, json);
        }
    }
    Ok(())
}
