//! automerge-repo network protocol v1, as CBOR maps.
//!
//! Every message is one CBOR map with a `type` field. Field names, their
//! types and the text form of document ids follow what
//! `@automerge/automerge-repo` 2.x sends, so its JavaScript client is a peer
//! like any other. Decoding is strict about what we act on (a `sync` without
//! `data` is an error) and lenient about what we do not (unknown keys are
//! skipped; unknown message types decode to [`Message::Unknown`] so a newer
//! peer does not get disconnected for an advisory message).

use crate::doc_id::{DocumentId, DocumentIdError};
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

/// The only protocol version this implementation speaks.
pub const PROTOCOL_VERSION: &str = "1";

/// Metadata a peer sends in `join` and `peer`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerMetadata {
    /// A stable id of the peer's storage, if it has one.
    pub storage_id: Option<String>,
    /// Whether the peer will forget everything when it disconnects.
    pub is_ephemeral: bool,
    /// The peer speaks V2 sync messages and takes a document it has none
    /// of as the first message about it: the sender may offer the whole
    /// stored document at once instead of starting with a summary and
    /// waiting to be asked (see [`crate::whole_doc::offer_stored`]). Our
    /// own key (`syncV2Offers`); automerge-repo peers neither send nor
    /// read it, and get the standard exchange.
    pub takes_whole_offers: bool,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message from the connecting side.
    Join { sender_id: String, supported_protocol_versions: Vec<String>, metadata: Option<PeerMetadata> },
    /// The accepting side's answer to `join`.
    Peer { sender_id: String, target_id: String, selected_protocol_version: String, metadata: Option<PeerMetadata> },
    /// Advisory: the sender is about to disconnect.
    Leave { sender_id: String },
    /// The sender wants a document it does not have; `data` is its first sync message.
    Request { sender_id: String, target_id: String, document_id: DocumentId, data: Vec<u8> },
    /// An automerge sync message for one document.
    Sync { sender_id: String, target_id: String, document_id: DocumentId, data: Vec<u8> },
    /// The sender does not have (or will not share) the document.
    DocUnavailable { sender_id: String, target_id: String, document_id: DocumentId },
    /// Presence and other data that is not stored.
    Ephemeral {
        sender_id: String,
        target_id: String,
        count: u64,
        session_id: String,
        document_id: DocumentId,
        data: Vec<u8>,
    },
    /// A protocol error; the sender closes the connection after it.
    Error { message: String },
    /// A message type this implementation does not act on (e.g.
    /// `remote-heads-changed`); kept so the caller can count and ignore it.
    Unknown { message_type: String },
}

/// Why bytes could not be read as a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed CBOR: {0}")]
    Cbor(String),
    #[error("message is not a CBOR map")]
    NotAMap,
    #[error("message has no `type` field")]
    MissingType,
    #[error("`{message_type}` message lacks field `{field}`")]
    MissingField { message_type: String, field: &'static str },
    #[error("field `{field}` has the wrong type")]
    WrongType { field: String },
    #[error("bad document id: {0}")]
    BadDocumentId(#[from] DocumentIdError),
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(e: minicbor::decode::Error) -> Self {
        DecodeError::Cbor(e.to_string())
    }
}

impl Message {
    /// The document this message is about, if any.
    pub fn document_id(&self) -> Option<DocumentId> {
        match self {
            Message::Request { document_id, .. }
            | Message::Sync { document_id, .. }
            | Message::DocUnavailable { document_id, .. }
            | Message::Ephemeral { document_id, .. } => Some(*document_id),
            _ => None,
        }
    }

    /// The `type` field as written on the wire.
    pub fn type_name(&self) -> &str {
        match self {
            Message::Join { .. } => "join",
            Message::Peer { .. } => "peer",
            Message::Leave { .. } => "leave",
            Message::Request { .. } => "request",
            Message::Sync { .. } => "sync",
            Message::DocUnavailable { .. } => "doc-unavailable",
            Message::Ephemeral { .. } => "ephemeral",
            Message::Error { .. } => "error",
            Message::Unknown { message_type } => message_type,
        }
    }

    /// Encodes the message as automerge-repo does.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.payload_len());
        // Writing into a Vec cannot fail: the error type is Infallible.
        let _ = self.encode_into(&mut Encoder::new(&mut out));
        out
    }

    fn payload_len(&self) -> usize {
        match self {
            Message::Request { data, .. } | Message::Sync { data, .. } | Message::Ephemeral { data, .. } => data.len(),
            _ => 0,
        }
    }

    fn encode_into<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        match self {
            Message::Join { sender_id, supported_protocol_versions, metadata } => {
                e.map(3 + u64::from(metadata.is_some()))?;
                e.str("type")?.str("join")?;
                e.str("senderId")?.str(sender_id)?;
                e.str("supportedProtocolVersions")?.array(supported_protocol_versions.len() as u64)?;
                for v in supported_protocol_versions {
                    e.str(v)?;
                }
                if let Some(m) = metadata {
                    e.str("peerMetadata")?;
                    encode_metadata(e, m)?;
                }
            }
            Message::Peer { sender_id, target_id, selected_protocol_version, metadata } => {
                e.map(4 + u64::from(metadata.is_some()))?;
                e.str("type")?.str("peer")?;
                e.str("senderId")?.str(sender_id)?;
                e.str("targetId")?.str(target_id)?;
                e.str("selectedProtocolVersion")?.str(selected_protocol_version)?;
                if let Some(m) = metadata {
                    e.str("peerMetadata")?;
                    encode_metadata(e, m)?;
                }
            }
            Message::Leave { sender_id } => {
                e.map(2)?;
                e.str("type")?.str("leave")?;
                e.str("senderId")?.str(sender_id)?;
            }
            Message::Request { sender_id, target_id, document_id, data }
            | Message::Sync { sender_id, target_id, document_id, data } => {
                e.map(5)?;
                e.str("type")?.str(self.type_name())?;
                e.str("senderId")?.str(sender_id)?;
                e.str("targetId")?.str(target_id)?;
                e.str("documentId")?.str(&document_id.to_string())?;
                e.str("data")?.bytes(data)?;
            }
            Message::DocUnavailable { sender_id, target_id, document_id } => {
                e.map(4)?;
                e.str("type")?.str("doc-unavailable")?;
                e.str("senderId")?.str(sender_id)?;
                e.str("targetId")?.str(target_id)?;
                e.str("documentId")?.str(&document_id.to_string())?;
            }
            Message::Ephemeral { sender_id, target_id, count, session_id, document_id, data } => {
                e.map(7)?;
                e.str("type")?.str("ephemeral")?;
                e.str("senderId")?.str(sender_id)?;
                e.str("targetId")?.str(target_id)?;
                e.str("count")?.u64(*count)?;
                e.str("sessionId")?.str(session_id)?;
                e.str("documentId")?.str(&document_id.to_string())?;
                e.str("data")?.bytes(data)?;
            }
            Message::Error { message } => {
                e.map(2)?;
                e.str("type")?.str("error")?;
                e.str("message")?.str(message)?;
            }
            Message::Unknown { message_type } => {
                e.map(1)?;
                e.str("type")?.str(message_type)?;
            }
        }
        Ok(())
    }

    /// Decodes one message. Never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut d = Decoder::new(bytes);
        let fields = Fields::read(&mut d)?;
        let message_type = fields.message_type.clone().ok_or(DecodeError::MissingType)?;
        let need_str = |value: &Option<String>, field: &'static str| {
            value.clone().ok_or_else(|| DecodeError::MissingField { message_type: message_type.clone(), field })
        };
        let need_bytes = |value: &Option<Vec<u8>>, field: &'static str| {
            value.clone().ok_or_else(|| DecodeError::MissingField { message_type: message_type.clone(), field })
        };
        let need_doc = |value: &Option<DocumentId>| {
            value.ok_or_else(|| DecodeError::MissingField { message_type: message_type.clone(), field: "documentId" })
        };
        Ok(match message_type.as_str() {
            "join" => Message::Join {
                sender_id: need_str(&fields.sender_id, "senderId")?,
                supported_protocol_versions: fields.supported_versions.clone().ok_or_else(|| {
                    DecodeError::MissingField { message_type: message_type.clone(), field: "supportedProtocolVersions" }
                })?,
                metadata: fields.metadata.clone(),
            },
            "peer" => Message::Peer {
                sender_id: need_str(&fields.sender_id, "senderId")?,
                target_id: need_str(&fields.target_id, "targetId")?,
                selected_protocol_version: need_str(&fields.selected_version, "selectedProtocolVersion")?,
                metadata: fields.metadata.clone(),
            },
            "leave" => Message::Leave { sender_id: need_str(&fields.sender_id, "senderId")? },
            "request" | "sync" => {
                let sender_id = need_str(&fields.sender_id, "senderId")?;
                let target_id = need_str(&fields.target_id, "targetId")?;
                let document_id = need_doc(&fields.document_id)?;
                let data = need_bytes(&fields.data, "data")?;
                if message_type == "request" {
                    Message::Request { sender_id, target_id, document_id, data }
                } else {
                    Message::Sync { sender_id, target_id, document_id, data }
                }
            }
            "doc-unavailable" => Message::DocUnavailable {
                sender_id: need_str(&fields.sender_id, "senderId")?,
                target_id: need_str(&fields.target_id, "targetId")?,
                document_id: need_doc(&fields.document_id)?,
            },
            "ephemeral" => Message::Ephemeral {
                sender_id: need_str(&fields.sender_id, "senderId")?,
                target_id: need_str(&fields.target_id, "targetId")?,
                count: fields.count.unwrap_or(0),
                session_id: need_str(&fields.session_id, "sessionId")?,
                document_id: need_doc(&fields.document_id)?,
                data: need_bytes(&fields.data, "data")?,
            },
            "error" => Message::Error { message: fields.message.clone().unwrap_or_default() },
            other => Message::Unknown { message_type: other.to_string() },
        })
    }
}

fn encode_metadata<W: minicbor::encode::Write>(
    e: &mut Encoder<W>,
    m: &PeerMetadata,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    e.map(1 + u64::from(m.storage_id.is_some()) + u64::from(m.takes_whole_offers))?;
    if let Some(id) = &m.storage_id {
        e.str("storageId")?.str(id)?;
    }
    e.str("isEphemeral")?.bool(m.is_ephemeral)?;
    if m.takes_whole_offers {
        e.str(WHOLE_OFFERS_KEY)?.bool(true)?;
    }
    Ok(())
}

/// The fields of one message map, each read with the type it must have.
#[derive(Default)]
struct Fields {
    message_type: Option<String>,
    sender_id: Option<String>,
    target_id: Option<String>,
    selected_version: Option<String>,
    supported_versions: Option<Vec<String>>,
    document_id: Option<DocumentId>,
    data: Option<Vec<u8>>,
    count: Option<u64>,
    session_id: Option<String>,
    message: Option<String>,
    metadata: Option<PeerMetadata>,
}

/// Limits nesting so a hostile frame cannot exhaust the stack in `skip`.
const MAX_MAP_ENTRIES: u64 = 64;

impl Fields {
    fn read(d: &mut Decoder<'_>) -> Result<Fields, DecodeError> {
        if d.datatype()? != Type::Map && d.datatype()? != Type::MapIndef {
            return Err(DecodeError::NotAMap);
        }
        let len = d.map()?;
        let mut f = Fields::default();
        let mut seen = 0u64;
        loop {
            match len {
                Some(n) if seen >= n => break,
                None if d.datatype()? == Type::Break => {
                    d.skip()?;
                    break;
                }
                _ => {}
            }
            seen += 1;
            if seen > MAX_MAP_ENTRIES {
                return Err(DecodeError::Cbor("too many map entries".into()));
            }
            if d.datatype()? != Type::String {
                d.skip()?;
                d.skip()?;
                continue;
            }
            let key = d.str()?.to_owned();
            match key.as_str() {
                "type" => f.message_type = Some(read_str(d, &key)?),
                "senderId" => f.sender_id = Some(read_str(d, &key)?),
                "targetId" => f.target_id = Some(read_str(d, &key)?),
                "selectedProtocolVersion" => f.selected_version = Some(read_str(d, &key)?),
                "sessionId" => f.session_id = Some(read_str(d, &key)?),
                "message" => f.message = read_optional_str(d)?,
                "supportedProtocolVersions" => {
                    let n = d.array()?.ok_or_else(|| DecodeError::WrongType { field: key.clone() })?;
                    if n > MAX_MAP_ENTRIES {
                        return Err(DecodeError::WrongType { field: key });
                    }
                    let mut versions = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        versions.push(read_str(d, &key)?);
                    }
                    f.supported_versions = Some(versions);
                }
                "documentId" => {
                    f.document_id = Some(match d.datatype()? {
                        Type::String => read_str(d, &key)?.parse()?,
                        _ => DocumentId::try_from(read_bytes(d, &key)?.as_slice())?,
                    })
                }
                "data" => f.data = Some(read_bytes(d, &key)?),
                "count" => f.count = Some(read_number(d, &key)?),
                "peerMetadata" | "metadata" => f.metadata = read_metadata(d)?,
                _ => d.skip()?,
            }
        }
        Ok(f)
    }
}

fn read_str(d: &mut Decoder<'_>, field: &str) -> Result<String, DecodeError> {
    match d.datatype()? {
        Type::String => Ok(d.str()?.to_owned()),
        _ => Err(DecodeError::WrongType { field: field.to_owned() }),
    }
}

fn read_optional_str(d: &mut Decoder<'_>) -> Result<Option<String>, DecodeError> {
    match d.datatype()? {
        Type::String => Ok(Some(d.str()?.to_owned())),
        _ => {
            d.skip()?;
            Ok(None)
        }
    }
}

/// Byte strings, optionally behind a CBOR tag (cbor-x can tag typed arrays).
fn read_bytes(d: &mut Decoder<'_>, field: &str) -> Result<Vec<u8>, DecodeError> {
    if d.datatype()? == Type::Tag {
        d.tag()?;
    }
    match d.datatype()? {
        Type::Bytes => Ok(d.bytes()?.to_vec()),
        Type::BytesIndef => {
            let mut out = Vec::new();
            for chunk in d.bytes_iter()? {
                out.extend_from_slice(chunk?);
            }
            Ok(out)
        }
        _ => Err(DecodeError::WrongType { field: field.to_owned() }),
    }
}

/// JavaScript numbers may arrive as CBOR integers or floats.
fn read_number(d: &mut Decoder<'_>, field: &str) -> Result<u64, DecodeError> {
    match d.datatype()? {
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Ok(d.u64()?),
        Type::F16 | Type::F32 | Type::F64 => {
            let v = d.f64()?;
            if v.is_finite() && v >= 0.0 { Ok(v as u64) } else { Ok(0) }
        }
        _ => Err(DecodeError::WrongType { field: field.to_owned() }),
    }
}

/// `peerMetadata` key of [`PeerMetadata::takes_whole_offers`].
const WHOLE_OFFERS_KEY: &str = "syncV2Offers";

/// A boolean field; anything else reads as `false`.
fn read_flag(d: &mut Decoder<'_>) -> Result<bool, DecodeError> {
    match d.datatype()? {
        Type::Bool => Ok(d.bool()?),
        _ => {
            d.skip()?;
            Ok(false)
        }
    }
}

fn read_metadata(d: &mut Decoder<'_>) -> Result<Option<PeerMetadata>, DecodeError> {
    if d.datatype()? != Type::Map {
        d.skip()?;
        return Ok(None);
    }
    let n = d.map()?.unwrap_or(0);
    if n > MAX_MAP_ENTRIES {
        return Err(DecodeError::WrongType { field: "peerMetadata".into() });
    }
    let mut m = PeerMetadata::default();
    for _ in 0..n {
        if d.datatype()? != Type::String {
            d.skip()?;
            d.skip()?;
            continue;
        }
        match d.str()? {
            "storageId" => m.storage_id = read_optional_str(d)?,
            "isEphemeral" => m.is_ephemeral = read_flag(d)?,
            WHOLE_OFFERS_KEY => m.takes_whole_offers = read_flag(d)?,
            _ => d.skip()?,
        }
    }
    Ok(Some(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc() -> DocumentId {
        DocumentId::derive(&["u", "d"])
    }

    #[test]
    fn every_message_round_trips() {
        let messages = vec![
            Message::Join {
                sender_id: "a".into(),
                supported_protocol_versions: vec!["1".into()],
                metadata: Some(PeerMetadata {
                    storage_id: Some("s".into()),
                    is_ephemeral: false,
                    takes_whole_offers: true,
                }),
            },
            Message::Peer {
                sender_id: "b".into(),
                target_id: "a".into(),
                selected_protocol_version: "1".into(),
                metadata: None,
            },
            Message::Leave { sender_id: "a".into() },
            Message::Request { sender_id: "a".into(), target_id: "b".into(), document_id: doc(), data: vec![1, 2] },
            Message::Sync { sender_id: "a".into(), target_id: "b".into(), document_id: doc(), data: vec![] },
            Message::DocUnavailable { sender_id: "a".into(), target_id: "b".into(), document_id: doc() },
            Message::Ephemeral {
                sender_id: "a".into(),
                target_id: "b".into(),
                count: 7,
                session_id: "x".into(),
                document_id: doc(),
                data: vec![9],
            },
            Message::Error { message: "no".into() },
        ];
        for m in messages {
            assert_eq!(Message::decode(&m.encode()), Ok(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn unknown_types_and_keys_are_tolerated() {
        let mut out = Vec::new();
        let mut e = Encoder::new(&mut out);
        e.map(3).unwrap();
        e.str("type").unwrap().str("remote-heads-changed").unwrap();
        e.str("newHeads").unwrap().map(0).unwrap();
        e.str("extra").unwrap().array(2).unwrap().u8(1).unwrap().u8(2).unwrap();
        assert_eq!(Message::decode(&out), Ok(Message::Unknown { message_type: "remote-heads-changed".into() }));
    }

    #[test]
    fn sync_without_data_is_an_error() {
        let mut out = Vec::new();
        let mut e = Encoder::new(&mut out);
        e.map(4).unwrap();
        e.str("type").unwrap().str("sync").unwrap();
        e.str("senderId").unwrap().str("a").unwrap();
        e.str("targetId").unwrap().str("b").unwrap();
        e.str("documentId").unwrap().str(&doc().to_string()).unwrap();
        assert!(matches!(Message::decode(&out), Err(DecodeError::MissingField { field: "data", .. })));
    }

    #[test]
    fn float_count_and_tagged_bytes_are_accepted() {
        let mut out = Vec::new();
        let mut e = Encoder::new(&mut out);
        e.map(7).unwrap();
        e.str("type").unwrap().str("ephemeral").unwrap();
        e.str("senderId").unwrap().str("a").unwrap();
        e.str("targetId").unwrap().str("b").unwrap();
        e.str("count").unwrap().f64(3.0).unwrap();
        e.str("sessionId").unwrap().str("s").unwrap();
        e.str("documentId").unwrap().str(&doc().to_string()).unwrap();
        e.str("data").unwrap().tag(minicbor::data::Tag::new(64)).unwrap().bytes(&[5]).unwrap();
        match Message::decode(&out) {
            Ok(Message::Ephemeral { count: 3, data, .. }) => assert_eq!(data, vec![5]),
            other => panic!("unexpected {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn sync_round_trips(data in proptest::collection::vec(any::<u8>(), 0..512), sender in "[a-z0-9-]{1,40}") {
            let m = Message::Sync { sender_id: sender, target_id: "relay".into(), document_id: doc(), data };
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }
}
