//! A minimal Rust automerge-repo peer over a raw WebSocket, for tests and
//! benches that need to hold arbitrary documents (the engine only holds
//! progress documents).

use automerge::Automerge;
use automerge::sync::{self, SyncDoc};
use futures_util::{SinkExt, StreamExt};
use protocol::{DocumentId, Message};
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct TestPeer {
    pub ws: Ws,
    pub peer_id: String,
    pub relay_id: String,
    /// Bytes of protocol messages sent and received (payload, without WebSocket framing).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
}

impl TestPeer {
    /// Connects with a bearer token and completes the handshake.
    pub async fn connect(url: &str, token: &str, peer_id: &str) -> Result<TestPeer, String> {
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().map_err(|_| "bad token header")?);
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(16 * 1024);
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(req, Some(config), true).await.map_err(|e| e.to_string())?;
        let mut peer = TestPeer {
            ws,
            peer_id: peer_id.to_owned(),
            relay_id: String::new(),
            bytes_sent: 0,
            bytes_received: 0,
            messages_sent: 0,
            messages_received: 0,
        };
        peer.send(Message::Join {
            sender_id: peer_id.to_owned(),
            supported_protocol_versions: vec!["1".into()],
            metadata: None,
        })
        .await?;
        match peer.recv(Duration::from_secs(10)).await? {
            Some(Message::Peer { sender_id, .. }) => peer.relay_id = sender_id,
            other => return Err(format!("expected peer, got {other:?}")),
        }
        Ok(peer)
    }

    pub async fn send(&mut self, m: Message) -> Result<(), String> {
        let bytes = m.encode();
        self.bytes_sent += bytes.len() as u64;
        self.messages_sent += 1;
        self.ws.send(tungstenite::Message::Binary(bytes.into())).await.map_err(|e| e.to_string())
    }

    /// The next protocol message, or `None` on timeout or close.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<Message>, String> {
        let next = tokio::time::timeout(timeout, async {
            loop {
                match self.ws.next().await {
                    None | Some(Ok(tungstenite::Message::Close(_))) => return Ok(None),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(tungstenite::Message::Binary(b))) => {
                        self.bytes_received += b.len() as u64;
                        self.messages_received += 1;
                        return Message::decode(&b).map(Some).map_err(|e| e.to_string());
                    }
                    Some(Ok(_)) => continue,
                }
            }
        });
        match next.await {
            Ok(r) => r,
            Err(_) => Ok(None),
        }
    }

    pub fn sync_message(&self, doc_id: DocumentId, doc: &Automerge, state: &mut sync::State) -> Option<Message> {
        doc.generate_sync_message(state).map(|m| Message::Sync {
            sender_id: self.peer_id.clone(),
            target_id: self.relay_id.clone(),
            document_id: doc_id,
            data: m.encode(),
        })
    }

    /// Exchanges sync messages for one document until both sides are quiet
    /// and the relay holds every head we have. Returns false on doc-unavailable.
    pub async fn sync_doc(
        &mut self,
        doc_id: DocumentId,
        doc: &mut Automerge,
        state: &mut sync::State,
        request: bool,
    ) -> Result<bool, String> {
        if let Some(m) = self.sync_message(doc_id, doc, state) {
            let m = match (request, m) {
                (true, Message::Sync { sender_id, target_id, document_id, data }) => {
                    Message::Request { sender_id, target_id, document_id, data }
                }
                (_, m) => m,
            };
            self.send(m).await?;
        }
        loop {
            let done = {
                let ours = doc.get_heads();
                !ours.is_empty()
                    && ours.iter().all(|h| state.shared_heads.contains(h))
                    && state.their_heads.as_ref() == Some(&ours)
            };
            if done {
                return Ok(true);
            }
            match self.recv(Duration::from_secs(10)).await? {
                Some(Message::Sync { document_id, data, .. }) if document_id == doc_id => {
                    let msg = sync::Message::decode(&data).map_err(|e| e.to_string())?;
                    doc.receive_sync_message(state, msg).map_err(|e| e.to_string())?;
                    if let Some(m) = self.sync_message(doc_id, doc, state) {
                        self.send(m).await?;
                    }
                }
                Some(Message::DocUnavailable { document_id, .. }) if document_id == doc_id => return Ok(false),
                Some(Message::Error { message }) => return Err(message),
                Some(_) => continue,
                None => return Err("relay went quiet before the document settled".into()),
            }
        }
    }
}
