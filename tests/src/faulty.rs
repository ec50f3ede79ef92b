//! A file server with injectable faults, for download tests: each request
//! takes the next fault from a queue (then behaves). Real HTTP on loopback.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serve correctly (honour Range, strong ETag).
    None,
    /// Send the headers and this many body bytes, then drop the connection.
    CutAfter(u64),
    /// Flip the byte at this absolute offset.
    CorruptByte(u64),
    /// Answer a Range request with 200 and the whole file.
    IgnoreRange,
    /// Answer a Range request with bytes starting this much later.
    ShiftRange(u64),
    /// Answer 416.
    Unsatisfiable,
    /// Append bytes the manifest does not know about.
    ExtraBytes(u64),
}

#[derive(Default)]
pub struct Served {
    pub requests: u64,
    pub ranged_requests: u64,
    pub bytes: u64,
}

struct Inner {
    data: Vec<u8>,
    etag: String,
    faults: Mutex<VecDeque<Fault>>,
    served: Mutex<Served>,
}

#[derive(Clone)]
pub struct FaultyServer {
    inner: Arc<Inner>,
    pub url: String,
}

impl FaultyServer {
    pub async fn start(data: Vec<u8>) -> FaultyServer {
        let etag = format!("\"{}\"", release::checksum::sha256_hex(&data));
        let inner =
            Arc::new(Inner { data, etag, faults: Mutex::new(VecDeque::new()), served: Mutex::new(Served::default()) });
        let app = axum::Router::new().route("/file", axum::routing::get(serve)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultyServer { inner, url: format!("http://{addr}/file") }
    }

    pub fn push(&self, faults: &[Fault]) {
        if let Ok(mut q) = self.inner.faults.lock() {
            q.extend(faults.iter().copied());
        }
    }

    pub fn served(&self) -> (u64, u64, u64) {
        self.inner.served.lock().map(|s| (s.requests, s.ranged_requests, s.bytes)).unwrap_or_default()
    }
}

async fn serve(State(s): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let fault = s.faults.lock().ok().and_then(|mut q| q.pop_front()).unwrap_or(Fault::None);
    let size = s.data.len() as u64;
    let range_start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok());
    let if_range_ok = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|t| t == s.etag);
    let range_start = range_start.filter(|_| if_range_ok);
    if let Ok(mut served) = s.served.lock() {
        served.requests += 1;
        served.ranged_requests += u64::from(range_start.is_some());
    }
    if fault == Fault::Unsatisfiable {
        return Response::builder().status(StatusCode::RANGE_NOT_SATISFIABLE).body(Body::empty()).unwrap_or_default();
    }
    let (status, start) = match (range_start, fault) {
        (Some(_), Fault::IgnoreRange) | (None, _) => (StatusCode::OK, 0),
        (Some(start), Fault::ShiftRange(d)) => (StatusCode::PARTIAL_CONTENT, (start + d).min(size)),
        (Some(start), _) => (StatusCode::PARTIAL_CONTENT, start.min(size)),
    };
    let mut body = s.data[start as usize..].to_vec();
    if let Fault::CorruptByte(at) = fault
        && at >= start
        && ((at - start) as usize) < body.len()
    {
        body[(at - start) as usize] ^= 0xff;
    }
    if let Fault::ExtraBytes(n) = fault {
        body.extend(std::iter::repeat_n(0u8, n as usize));
    }
    let len = body.len() as u64;
    let mut builder = Response::builder()
        .status(status)
        .header(header::ETAG, &s.etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, len);
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + len.max(1) - 1));
    }
    let cut = match fault {
        Fault::CutAfter(n) => Some(n.min(len) as usize),
        _ => None,
    };
    let sent = cut.unwrap_or(len as usize) as u64;
    if let Ok(mut served) = s.served.lock() {
        served.bytes += sent;
    }
    let body = match cut {
        None => Body::from(body),
        Some(n) => {
            let head = bytes::Bytes::from(body[..n].to_vec());
            // Yield the bytes, give the server time to flush them to the
            // socket, then fail the body: the client sees its bytes, then a
            // dropped connection.
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let head = head.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, std::io::Error>(head), 1)),
                        1 => {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            Some((Err(std::io::Error::other("connection cut by the test")), 2))
                        }
                        _ => None,
                    }
                }
            });
            Body::from_stream(stream)
        }
    };
    builder.body(body).unwrap_or_default()
}
