//! The protocol's tensors on the wire: `infer`'s request and response bodies, and
//! their data in JSON (`data` a flat or nested row-major array) or in Triton's binary
//! tensor data extension (the JSON header, then each binary tensor's raw bytes in
//! order; the header's length in `Inference-Header-Content-Length`; a tensor's
//! `parameters.binary_data_size` says how many bytes are its own). A BYTES element is
//! a 4-byte little-endian length and that many bytes; numbers are little-endian.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The header giving the JSON part's length in a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// `POST .../infer`'s body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferRequest {
    /// Echoed in the answer.
    #[serde(default)]
    pub id: Option<String>,
    /// Generation parameters (TGI's names, `max_tokens`, ...) and the protocol's own
    /// (`binary_data_output`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InputTensor>,
    /// The outputs wanted (all of them when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// An input tensor as sent.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    /// `BYTES` for text; numbers (`INT32`, `FP32`, ...) or `BOOL` for parameter tensors.
    pub datatype: String,
    /// `content_type` (MLServer: `str` or `base64`), `binary_data_size`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// The elements, flat or nested; absent when they are binary.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Value>,
}

/// An output asked for.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    /// `binary_data: true` asks for it in binary.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

/// `infer`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
}

/// An output tensor: BYTES strings in `data`, or in binary after the JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: &'static str,
    /// `content_type: str` (MLServer's codec); `binary_data_size` when binary.
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<String>>,
}

/// A tensor's elements once decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Elements {
    Bytes(Vec<Vec<u8>>),
    /// Numbers and booleans as JSON values.
    Scalars(Vec<Value>),
}

impl Elements {
    pub fn len(&self) -> usize {
        match self {
            Elements::Bytes(b) => b.len(),
            Elements::Scalars(s) => s.len(),
        }
    }
}

/// A decoded input tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: String,
    /// MLServer's `content_type` parameter, if given.
    pub content_type: Option<String>,
    pub elements: Elements,
}

/// Little-endian element size of a numeric datatype this server reads.
fn scalar_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "UINT16" | "INT16" => 2,
        "UINT32" | "INT32" | "FP32" => 4,
        "UINT64" | "INT64" | "FP64" => 8,
        _ => return None,
    })
}

/// Split a body into its JSON header and binary part (all JSON without the header).
pub fn split_body(headers: &HeaderMap, body: &Bytes) -> Result<(Bytes, Bytes), String> {
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && encoding.as_bytes() != b"identity"
    {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        return Err(format!(
            "request compression (`Content-Encoding: {encoding}`) is not supported"
        ));
    }
    let Some(length) = headers.get(HEADER_LENGTH) else {
        return Ok((body.clone(), Bytes::new()));
    };
    let length: usize = length
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or("`Inference-Header-Content-Length` must be a number of bytes")?;
    if length > body.len() {
        return Err(format!(
            "`Inference-Header-Content-Length` is {length} but the body has {} bytes",
            body.len()
        ));
    }
    Ok((body.slice(..length), body.slice(length..)))
}

/// Decode every input, taking binary ones from `binary` in order (all of it must be
/// claimed).
pub fn decode_inputs(inputs: Vec<InputTensor>, binary: &[u8]) -> Result<Vec<Tensor>, String> {
    let mut rest = binary;
    let tensors = inputs.into_iter().map(|t| decode(t, &mut rest)).collect::<Result<_, _>>()?;
    if !rest.is_empty() {
        return Err(format!("{} bytes of binary data are not claimed by any input", rest.len()));
    }
    Ok(tensors)
}

fn decode(t: InputTensor, binary: &mut &[u8]) -> Result<Tensor, String> {
    let name = &t.name;
    let mut shape = Vec::with_capacity(t.shape.len());
    let mut count = 1usize;
    for &d in &t.shape {
        let d = usize::try_from(d).map_err(|_| {
            format!("input `{name}` has a negative dimension in shape {:?}", t.shape)
        })?;
        count =
            count.checked_mul(d).ok_or_else(|| format!("input `{name}`'s shape is too large"))?;
        shape.push(d);
    }
    let bytes = t.datatype == "BYTES";
    if !bytes && scalar_size(&t.datatype).is_none() {
        return Err(format!("input `{name}` has unsupported datatype `{}`", t.datatype));
    }
    let content_type = match t.parameters.get("content_type") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(format!("input `{name}`'s `content_type` must be a string")),
    };
    let elements = match t.parameters.get("binary_data_size") {
        Some(size) => {
            if t.data.is_some() {
                return Err(format!("input `{name}` has both `data` and `binary_data_size`"));
            }
            let size = size.as_u64().ok_or_else(|| {
                format!("input `{name}`'s `binary_data_size` must be a byte count")
            })? as usize;
            if size > binary.len() {
                return Err(format!(
                    "input `{name}` claims {size} bytes of binary data but {} are left",
                    binary.len()
                ));
            }
            let (own, rest) = binary.split_at(size);
            *binary = rest;
            if bytes { binary_bytes(name, own)? } else { binary_scalars(name, &t.datatype, own)? }
        }
        None => {
            let data = t.data.as_ref().ok_or_else(|| format!("input `{name}` has no `data`"))?;
            let mut leaves = Vec::new();
            flatten(data, &mut leaves);
            if bytes {
                let base64 = content_type.as_deref() == Some("base64");
                let decode = |v: &Value| match v {
                    Value::String(s) if base64 => base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| format!("input `{name}` is not valid base64: {e}")),
                    Value::String(s) => Ok(s.as_bytes().to_vec()),
                    other => Err(format!(
                        "input `{name}` is BYTES: its data must be strings, not {other}"
                    )),
                };
                Elements::Bytes(leaves.into_iter().map(decode).collect::<Result<_, _>>()?)
            } else {
                let check = |v: &Value| scalar(name, &t.datatype, v).map(|()| v.clone());
                Elements::Scalars(leaves.into_iter().map(check).collect::<Result<_, _>>()?)
            }
        }
    };
    if elements.len() != count {
        return Err(format!(
            "input `{name}` has shape {shape:?} ({count} elements) but {} elements of data",
            elements.len()
        ));
    }
    Ok(Tensor { name: t.name, shape, datatype: t.datatype, content_type, elements })
}

/// Row-major leaves of nested arrays.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        leaf => out.push(leaf),
    }
}

/// Whether a JSON leaf fits a numeric or boolean datatype.
fn scalar(name: &str, datatype: &str, v: &Value) -> Result<(), String> {
    let fits = match datatype {
        "BOOL" => v.is_boolean(),
        "FP32" | "FP64" => v.is_number(),
        d if d.starts_with("UINT") => v.is_u64(),
        _ => v.is_i64() || v.is_u64(),
    };
    if fits { Ok(()) } else { Err(format!("input `{name}` is {datatype}: {v} does not fit")) }
}

fn binary_bytes(name: &str, mut raw: &[u8]) -> Result<Elements, String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let bad = || format!("input `{name}`'s binary BYTES data is cut short");
        let (len, rest) = raw.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(bad());
        }
        out.push(rest[..len].to_vec());
        raw = &rest[len..];
    }
    Ok(Elements::Bytes(out))
}

fn binary_scalars(name: &str, datatype: &str, raw: &[u8]) -> Result<Elements, String> {
    let size = scalar_size(datatype).unwrap_or(1);
    if !raw.len().is_multiple_of(size) {
        return Err(format!(
            "input `{name}`: {} bytes is not a whole number of {datatype}",
            raw.len()
        ));
    }
    let values = raw.chunks_exact(size).map(|c| {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(c);
        let signed = |bits: u32| {
            let v = u64::from_le_bytes(b);
            let shift = 64 - bits;
            Value::from(((v << shift) as i64) >> shift)
        };
        match datatype {
            "BOOL" => Value::Bool(c[0] != 0),
            "UINT8" | "UINT16" | "UINT32" | "UINT64" => Value::from(u64::from_le_bytes(b)),
            "INT8" | "INT16" | "INT32" | "INT64" => signed(8 * size as u32),
            "FP32" => Value::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
            _ => Value::from(f64::from_le_bytes(b)),
        }
    });
    Ok(Elements::Scalars(values.collect()))
}

/// BYTES elements in the binary extension's encoding.
pub fn encode_bytes<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// The answer: plain JSON, or the JSON header followed by `binary` (then its length in
/// `Inference-Header-Content-Length`).
pub fn respond(response: &InferResponse, binary: Vec<u8>) -> Response {
    let json = serde_json::to_vec(response).unwrap_or_default();
    if binary.is_empty() {
        return ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json)
            .into_response();
    }
    let length = json.len();
    let mut body = json;
    body.extend_from_slice(&binary);
    let mut r = body.into_response();
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(HEADER_LENGTH, HeaderValue::from(length));
    r
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input(v: Value) -> InputTensor {
        serde_json::from_value(v).unwrap()
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::validation::tests::any_json;

        fn datatype() -> impl Strategy<Value = String> {
            prop_oneof![
                proptest::sample::select(vec![
                    "BOOL", "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FP32",
                    "UINT64", "INT64", "FP64", "BYTES", "FP16", "BF16",
                ])
                .prop_map(String::from),
                "[A-Z0-9]{0,6}",
            ]
        }

        /// An input tensor as a client might declare it: any shape (negative, zero,
        /// huge dimensions), any datatype, JSON data or a claim on the binary part.
        fn tensor() -> impl Strategy<Value = InputTensor> {
            let dim = prop_oneof![4 => 0i64..5, 1 => any::<i64>(), 1 => Just(1i64 << 32)];
            let size = prop_oneof![4 => (0u64..64).prop_map(Value::from), 1 => any_json()];
            (
                "[a-z]{1,6}",
                proptest::collection::vec(dim, 0..4),
                datatype(),
                proptest::option::of(size),
                proptest::option::of(prop_oneof![Just("base64"), Just("str")]),
                proptest::option::of(any_json()),
            )
                .prop_map(|(name, shape, datatype, size, content_type, data)| {
                    let mut parameters = Map::new();
                    if let Some(s) = size {
                        parameters.insert("binary_data_size".into(), s);
                    }
                    if let Some(c) = content_type {
                        parameters.insert("content_type".into(), Value::from(c));
                    }
                    InputTensor { name, shape, datatype, parameters, data }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            /// Untrusted declarations over untrusted bytes: never a panic (no overflow, no
            /// huge allocation); what decodes holds exactly its shape's element count and
            /// every binary byte was claimed by some input.
            #[test]
            fn any_tensors_over_any_bytes_decode_or_are_refused(
                inputs in proptest::collection::vec(tensor(), 0..3),
                binary in proptest::collection::vec(any::<u8>(), 0..80),
            ) {
                let shapes: Vec<Vec<i64>> = inputs.iter().map(|t| t.shape.clone()).collect();
                if let Ok(tensors) = decode_inputs(inputs, &binary) {
                    for (t, declared) in tensors.iter().zip(shapes) {
                        // Decoding checked the product; a zero dimension makes it 0 whatever follows.
                        let count = if declared.contains(&0) { 0 } else { declared.iter().product::<i64>() };
                        prop_assert_eq!(t.elements.len() as i64, count);
                    }
                }
            }

            /// The binary extension's header length, whatever the client sends.
            #[test]
            fn any_header_length_splits_or_is_refused(
                length in prop_oneof![(0usize..100).prop_map(|n| n.to_string()), "\\PC{0,12}"],
                body in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut headers = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&length) {
                    headers.insert(HEADER_LENGTH, v);
                }
                let body = Bytes::from(body);
                if let Ok((json, rest)) = split_body(&headers, &body) {
                    prop_assert_eq!(json.len() + rest.len(), body.len());
                }
            }
        }
    }

    #[test]
    fn json_data_may_be_nested_and_must_fill_the_shape() {
        let t = input(
            json!({"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}),
        );
        let got = decode_inputs(vec![t], &[]).unwrap();
        assert_eq!(got[0].shape, [2, 1]);
        assert_eq!(got[0].elements, Elements::Bytes(vec![b"a".to_vec(), b"b".to_vec()]));
        let t =
            input(json!({"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}));
        let err = decode_inputs(vec![t], &[]).unwrap_err();
        assert_eq!(err, "input `text` has shape [3] (3 elements) but 2 elements of data");
        let t = input(json!({"name": "x", "shape": [-1], "datatype": "BYTES", "data": ["a"]}));
        assert!(decode_inputs(vec![t], &[]).unwrap_err().contains("negative dimension"));
        let t = input(json!({"name": "x", "shape": [1], "datatype": "BYTES", "data": [3]}));
        assert!(decode_inputs(vec![t], &[]).unwrap_err().contains("must be strings"));
        let t = input(json!({"name": "x", "shape": [1], "datatype": "FP16", "data": [3]}));
        assert_eq!(
            decode_inputs(vec![t], &[]).unwrap_err(),
            "input `x` has unsupported datatype `FP16`"
        );
        let t = input(json!({"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}));
        assert!(decode_inputs(vec![t], &[]).unwrap_err().contains("does not fit"));
        let t = input(json!({"name": "x", "shape": [1], "datatype": "BYTES"}));
        assert_eq!(decode_inputs(vec![t], &[]).unwrap_err(), "input `x` has no `data`");
    }

    #[test]
    fn mlserver_base64_content_type_is_decoded() {
        let t = input(json!({"name": "args", "shape": [1], "datatype": "BYTES",
            "parameters": {"content_type": "base64"}, "data": ["aGk="]}));
        let got = decode_inputs(vec![t], &[]).unwrap();
        assert_eq!(got[0].elements, Elements::Bytes(vec![b"hi".to_vec()]));
        assert_eq!(got[0].content_type.as_deref(), Some("base64"));
    }

    #[test]
    fn binary_tensors_are_taken_in_order_and_must_be_whole() {
        let text = encode_bytes([b"Hello".as_slice(), "wörld".as_bytes()]);
        let mut binary = text.clone();
        binary.extend_from_slice(&7i32.to_le_bytes());
        binary.extend_from_slice(&0.5f32.to_le_bytes());
        let inputs = || {
            vec![
                input(json!({"name": "text_input", "shape": [2], "datatype": "BYTES",
                    "parameters": {"binary_data_size": text.len()}})),
                input(json!({"name": "max_tokens", "shape": [1], "datatype": "INT32",
                    "parameters": {"binary_data_size": 4}})),
                input(json!({"name": "temperature", "shape": [1, 1], "datatype": "FP32",
                    "parameters": {"binary_data_size": 4}})),
            ]
        };
        let got = decode_inputs(inputs(), &binary).unwrap();
        assert_eq!(got[0].elements, Elements::Bytes(vec![b"Hello".to_vec(), "wörld".into()]));
        assert_eq!(got[1].elements, Elements::Scalars(vec![json!(7)]));
        assert_eq!(got[2].elements, Elements::Scalars(vec![json!(0.5)]));
        let mut extra = binary.clone();
        extra.push(0);
        assert_eq!(
            decode_inputs(inputs(), &extra).unwrap_err(),
            "1 bytes of binary data are not claimed by any input"
        );
        let short = &binary[..binary.len() - 2];
        assert!(decode_inputs(inputs(), short).unwrap_err().contains("claims 4 bytes"));
        let cut = input(json!({"name": "t", "shape": [1], "datatype": "BYTES",
            "parameters": {"binary_data_size": 6}}));
        assert!(decode_inputs(vec![cut], &text[..6]).unwrap_err().contains("cut short"));
    }

    #[test]
    fn negative_binary_integers_keep_their_sign() {
        let t = input(json!({"name": "seed", "shape": [2], "datatype": "INT16",
            "parameters": {"binary_data_size": 4}}));
        let raw = [(-3i16).to_le_bytes(), 5i16.to_le_bytes()].concat();
        let got = decode_inputs(vec![t], &raw).unwrap();
        assert_eq!(got[0].elements, Elements::Scalars(vec![json!(-3), json!(5)]));
    }

    #[test]
    fn the_header_length_splits_the_body() {
        let body = Bytes::from_static(b"{\"a\":1}rawbytes");
        let mut headers = HeaderMap::new();
        assert_eq!(split_body(&headers, &body).unwrap().1.len(), 0);
        headers.insert(HEADER_LENGTH, HeaderValue::from(7));
        let (json, raw) = split_body(&headers, &body).unwrap();
        assert_eq!((&json[..], &raw[..]), (&b"{\"a\":1}"[..], &b"rawbytes"[..]));
        headers.insert(HEADER_LENGTH, HeaderValue::from(99));
        assert!(split_body(&headers, &body).is_err());
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(split_body(&headers, &body).unwrap_err().contains("gzip"));
    }
}
