//! vLLM's KV-event stream, so that prefix-aware routers (llm-d's precise prefix-cache
//! scorer, NVIDIA Dynamo's KV router) send a request to the replica that already holds
//! its prefix: `--kv-events-endpoint tcp://*:5557` publishes, on a ZeroMQ PUB socket,
//! one message per engine step that changed the prefix cache — three frames: the topic
//! (`--kv-events-topic`), an 8-byte big-endian sequence number (0, 1, 2, ...; a gap
//! means the subscriber missed batches), and the batch in msgpack as vLLM's msgspec
//! structs encode it (`array_like`, tagged):
//!
//! ```text
//! [ts, [event, ...]]
//! event = ["BlockStored", [hash], parent_hash | nil, [token_id x 16], 16, nil, medium]
//!       | ["BlockRemoved", [hash], medium]
//!       | ["AllBlocksCleared"]
//! ```
//!
//! A hash is the first 8 bytes (big-endian) of the block's keyed blake3 hash, as an
//! unsigned integer (vLLM's integer block hashes); `medium` is `"GPU"` or `"CPU"`, the device
//! the engine runs on.
//! Each batch lists one block per event. The stream starts with `AllBlocksCleared`.

use std::time::{SystemTime, UNIX_EPOCH};

use rmpv::Value;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketSend, ZmqMessage};

use crate::block_manager::{BlockHash, KvEvent};

/// The block hash routers see.
pub fn external_hash(hash: &BlockHash) -> u64 {
    u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// One batch's msgpack payload.
pub fn encode_batch(ts: f64, events: &[KvEvent], medium: &str) -> Vec<u8> {
    let hash = |h: &BlockHash| Value::from(external_hash(h));
    let events = events
        .iter()
        .map(|e| match e {
            KvEvent::Stored { hash: h, parent, tokens } => Value::Array(vec![
                "BlockStored".into(),
                Value::Array(vec![hash(h)]),
                parent.as_ref().map_or(Value::Nil, hash),
                Value::Array(tokens.iter().map(|&t| Value::from(t)).collect()),
                Value::from(tokens.len()),
                Value::Nil,
                medium.into(),
            ]),
            KvEvent::Removed { hash: h } => Value::Array(vec![
                "BlockRemoved".into(),
                Value::Array(vec![hash(h)]),
                medium.into(),
            ]),
            KvEvent::AllCleared => Value::Array(vec!["AllBlocksCleared".into()]),
        })
        .collect();
    let batch = Value::Array(vec![Value::F64(ts), Value::Array(events)]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &batch).expect("writing to a Vec cannot fail");
    out
}

/// One engine step's changes to the prefix cache, and where the cache lives (`"GPU"` or
/// `"CPU"`: the device the engine runs on, [`medium`]).
#[derive(Debug)]
pub struct KvEventBatch {
    pub medium: &'static str,
    pub events: Vec<KvEvent>,
}

/// The medium vLLM's events name for a device (`Device::name`).
pub fn medium(device: &str) -> &'static str {
    if device == "cuda" { "GPU" } else { "CPU" }
}

/// The bound PUB socket.
pub struct Publisher {
    socket: zeromq::PubSocket,
    topic: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("topic", &self.topic).finish()
    }
}

impl Publisher {
    /// Bind `endpoint` (`tcp://host:port`; `*` for every address).
    pub async fn bind(endpoint: &str, topic: String) -> Result<Self, String> {
        let mut socket = zeromq::PubSocket::new();
        // The zeromq crate takes `0.0.0.0` where libzmq takes `*`.
        let endpoint = endpoint.replace("tcp://*:", "tcp://0.0.0.0:");
        socket
            .bind(&endpoint)
            .await
            .map_err(|e| format!("--kv-events-endpoint {endpoint}: {e}"))?;
        Ok(Publisher { socket, topic })
    }

    /// Send every batch the engine makes, numbered from 0, until the engine stops.
    pub async fn run(mut self, mut batches: mpsc::UnboundedReceiver<KvEventBatch>) {
        let mut seq: u64 = 0;
        while let Some(KvEventBatch { medium, events }) = batches.recv().await {
            let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            let mut message = ZmqMessage::from(self.topic.clone().into_bytes());
            message.push_back(seq.to_be_bytes().to_vec().into());
            message.push_back(encode_batch(ts, &events, medium).into());
            if let Err(e) = self.socket.send(message).await {
                tracing::warn!(error = %e, "cannot publish KV events");
            }
            seq += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The medium is the device the engine runs on (not a guess made before it loads).
    #[test]
    fn the_medium_names_the_device() {
        assert_eq!((medium("cuda"), medium("cpu")), ("GPU", "CPU"));
    }

    #[test]
    fn batches_encode_as_vllm_msgspec_arrays() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let events = [
            KvEvent::AllCleared,
            KvEvent::Stored { hash: b, parent: Some(a), tokens: vec![5; 16] },
            KvEvent::Removed { hash: a },
        ];
        let bytes = encode_batch(1.5, &events, "CPU");
        let v = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        let batch = v.as_array().unwrap();
        assert_eq!(batch[0].as_f64(), Some(1.5));
        let e = batch[1].as_array().unwrap();
        assert_eq!(e[0], Value::Array(vec!["AllBlocksCleared".into()]));
        let stored = e[1].as_array().unwrap();
        assert_eq!(stored[0].as_str(), Some("BlockStored"));
        assert_eq!(stored[1], Value::Array(vec![Value::from(0x0202_0202_0202_0202u64)]));
        assert_eq!(stored[2].as_u64(), Some(0x0101_0101_0101_0101));
        assert_eq!(stored[3].as_array().unwrap().len(), 16);
        assert_eq!(
            (stored[4].as_u64(), &stored[5], stored[6].as_str()),
            (Some(16), &Value::Nil, Some("CPU"))
        );
        let removed = e[2].as_array().unwrap();
        assert_eq!(removed.len(), 3);
        assert_eq!(removed[0].as_str(), Some("BlockRemoved"));
    }
}
