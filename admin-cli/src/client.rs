//! The HTTP side: one method per verb, errors turned into what the relay said.

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use release::dto::ErrorBody;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the relay: {0}")]
    Network(String),
    #[error("{message}")]
    Relay { status: u16, message: String, body: Option<ErrorBody> },
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

pub use release::names::encode_path_segment as segment;

/// An error with its causes ("error sending request" alone says nothing;
/// the certificate or connection error under it does).
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

impl Client {
    /// A client for the relay at `base`; `ca_cert` is a PEM file of a CA to
    /// trust besides the web's roots.
    pub fn new(base: &str, token: &str, ca_cert: Option<&Path>) -> Result<Client, CliError> {
        let base = base.trim();
        match reqwest::Url::parse(base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(url) => {
                return Err(CliError::Usage(format!(
                    "--url `{base}` must be an http:// or https:// URL (scheme `{}`)",
                    url.scheme()
                )));
            }
            Err(_) => {
                return Err(CliError::Usage(format!(
                    "--url `{base}` is not a URL; write it with its scheme, e.g. http://{base}"
                )));
            }
        }
        // `$(cat token-file)` keeps a stray \r; a token is visible ASCII.
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CliError::Usage(
                "the admin token (--token or RELAY_ADMIN_TOKEN) is empty or holds spaces or control characters; \
                 copy it again from the relay's --admin-token or its dev-admin-token file"
                    .into(),
            ));
        }
        let pem = match ca_cert {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| CliError::Usage(format!("cannot read the CA certificate {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let tls = tls_config::client_config(pem.as_deref()).map_err(|e| CliError::Usage(format!("--ca-cert: {e}")))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| CliError::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client { http, base: base.trim_end_matches('/').to_owned(), token: token.to_owned() })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| CliError::Network(causes(&e)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| CliError::Network(causes(&e)))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| CliError::Network(format!("unexpected answer: {e}")));
        }
        let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        let mut message = match &body {
            Some(b) => format!("{} ({}): {}", status.as_u16(), b.error, b.message),
            None => format!("{}: {}", status, String::from_utf8_lossy(&bytes)),
        };
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            message.push_str(
                "\nadmin tokens are the TOKEN part of the relay's --admin-token NAME=TOKEN (or RELAY_ADMIN_TOKENS); \
                 a development relay keeps its token in <data-dir>/dev-admin-token. \
                 Pass it with --token or RELAY_ADMIN_TOKEN.",
            );
        }
        Err(CliError::Relay { status: status.as_u16(), message, body })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, CliError> {
        self.send(self.http.get(format!("{}{path}", self.base)).query(query)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, CliError> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<Value, CliError> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, CliError> {
        self.send(self.http.delete(format!("{}{path}", self.base))).await
    }

    /// Streams `file` to the relay (never whole in memory), with a progress bar.
    pub async fn upload(&self, release: &str, name: &str, file: &Path, progress: bool) -> Result<Value, CliError> {
        let handle = tokio::fs::File::open(file).await?;
        let len = handle.metadata().await?.len();
        let bar = if progress { ProgressBar::new(len) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(name.to_owned());
        let counter = bar.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(handle, 256 * 1024).inspect(move |chunk| {
            if let Ok(c) = chunk {
                counter.inc(c.len() as u64);
            }
        });
        let url = format!("{}/admin/releases/{}/artifacts/{}", self.base, segment(release), segment(name));
        // Ask first: a refusal (token, state, name, size) is read as the
        // relay's answer here, not as a broken pipe halfway through the body.
        self.check_upload(&url, len).await?;
        let req = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream));
        let out = self.send(req).await;
        bar.finish_and_clear();
        match out {
            // The relay may have refused mid-way and closed (a race with
            // another admin, a full disk): its reason beats "broken pipe".
            Err(CliError::Network(e)) => match self.check_upload(&url, len).await {
                Err(refusal @ CliError::Relay { .. }) => Err(refusal),
                _ => Err(CliError::Network(e)),
            },
            other => other,
        }
    }

    /// The relay's answer to "would an upload of `len` bytes to `url` be accepted?".
    async fn check_upload(&self, url: &str, len: u64) -> Result<Value, CliError> {
        self.send(self.http.put(url).query(&[("dry_run", "true".to_owned()), ("size", len.to_string())])).await
    }
}
