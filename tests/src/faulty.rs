//! A file server with injectable faults, for download tests: each request
//! takes the next fault from a queue (then behaves). Real HTTP/1.1 on
//! loopback, written by hand on a TCP socket so that a cut is exact: the
//! server writes the headers and exactly N body bytes, flushes them, and
//! closes the socket. No timing is involved.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serve correctly (honour Range, strong ETag).
    None,
    /// Send the headers and this many body bytes, then close the connection.
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
struct Served {
    requests: u64,
    ranged_requests: u64,
    bytes: u64,
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
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = inner.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(server.clone(), socket));
            }
        });
        FaultyServer { inner, url: format!("http://{addr}/file") }
    }

    pub fn push(&self, faults: &[Fault]) {
        if let Ok(mut q) = self.inner.faults.lock() {
            q.extend(faults.iter().copied());
        }
    }

    /// (requests, requests with a usable Range, body bytes sent)
    pub fn served(&self) -> (u64, u64, u64) {
        self.inner.served.lock().map(|s| (s.requests, s.ranged_requests, s.bytes)).unwrap_or_default()
    }
}

/// Reads one request head; returns (path, header lines lowercased by name).
async fn read_head(socket: &mut TcpStream) -> Option<(String, Vec<(String, String)>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.ok()? == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((path, headers))
}

async fn serve(s: Arc<Inner>, mut socket: TcpStream) {
    let Some((path, headers)) = read_head(&mut socket).await else { return };
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if path != "/file" {
        let _ = socket.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        return;
    }
    let fault = s.faults.lock().ok().and_then(|mut q| q.pop_front()).unwrap_or(Fault::None);
    let size = s.data.len() as u64;
    let if_range_ok = header("if-range").is_none_or(|t| t == s.etag);
    let range_start = header("range")
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| if_range_ok);
    if let Ok(mut served) = s.served.lock() {
        served.requests += 1;
        served.ranged_requests += u64::from(range_start.is_some());
    }
    if fault == Fault::Unsatisfiable {
        let head = format!(
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = socket.write_all(head.as_bytes()).await;
        return;
    }
    let (partial, start) = match (range_start, fault) {
        (Some(_), Fault::IgnoreRange) | (None, _) => (false, 0),
        (Some(start), Fault::ShiftRange(d)) => (true, (start + d).min(size)),
        (Some(start), _) => (true, start.min(size)),
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
    let mut head = format!(
        "HTTP/1.1 {}\r\nETag: {}\r\nAccept-Ranges: bytes\r\nContent-Length: {len}\r\nConnection: close\r\n",
        if partial { "206 Partial Content" } else { "200 OK" },
        s.etag
    );
    if partial {
        head.push_str(&format!("Content-Range: bytes {start}-{}/{size}\r\n", start + len.max(1) - 1));
    }
    head.push_str("\r\n");
    let sent = match fault {
        Fault::CutAfter(n) => n.min(len),
        _ => len,
    };
    if let Ok(mut served) = s.served.lock() {
        served.bytes += sent;
    }
    let _ = socket.write_all(head.as_bytes()).await;
    let _ = socket.write_all(&body[..sent as usize]).await;
    let _ = socket.flush().await;
    let _ = socket.shutdown().await;
}
