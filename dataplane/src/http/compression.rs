//! Brotli on the wire (issue 11): `Accept-Encoding` negotiation (RFC 9110
//! §12.5.3, q-values, `*`, `identity`), the list of types worth
//! compressing, and streaming Brotli encoder/decoder adapters over
//! [`ByteStream`]s with bounded memory, used by object GETs, by uploads to
//! buckets that store objects compressed, and by [`compress_json`] on the
//! JSON APIs.
//!
//! Bounds:
//! - memory: input is fed in the chunks the upstream gives, output leaves
//!   in pieces of at most [`OUT_CHUNK`] bytes, and a decoder never expands
//!   more than one piece ahead of what the client has read — so a
//!   "Brotli bomb" (a few KB expanding to GBs) costs one piece of memory;
//! - CPU: work happens only while the client reads (a slow client stalls
//!   its stream, it does not spin), and at most [`budget`] bodies are
//!   being compressed on the wire at once: past that, responses go out
//!   uncompressed (compression is an optimisation, never a reason to
//!   queue). Decoding is cheap and needs no permit.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use brotli::enc::StandardAlloc;
use brotli::enc::encode::{
    BrotliEncoderOperation, BrotliEncoderParameter, BrotliEncoderStateStruct,
};
use brotli::{BrotliDecompressStream, BrotliResult, BrotliState};
use bytes::Bytes;
use futures::StreamExt;
use strata_storage::ByteStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies smaller than this are sent as they are: the framing overhead and
/// the CPU are not worth the few bytes saved.
pub const MIN_SIZE: u64 = 1024;
/// Largest piece of output produced per step.
pub const OUT_CHUNK: usize = 64 * 1024;
/// Quality on the wire: fast (hundreds of MB/s on text), most of the gain.
pub const WIRE_QUALITY: u32 = 5;
/// Quality at rest: compressed once, read many times; chosen for size
/// within a throughput the upload path can carry (see `bench/`).
pub const STORED_QUALITY: u32 = 9;
/// Window (log2): 4 MiB, what browsers accept for `br`.
const LGWIN: u32 = 22;
/// JSON API responses larger than this are not buffered for compression.
const MAX_JSON_BUFFER: usize = 16 << 20;

/// The documented compressible types (by essence): text and the structured
/// formats that are text underneath. Everything else — images, video,
/// audio, archives, compressed fonts, PDFs, `application/octet-stream` —
/// is left alone: compressing it again wastes CPU for no gain.
pub fn compressible(essence: &str) -> bool {
    let essence = essence.trim().to_ascii_lowercase();
    if essence.starts_with("text/") {
        return true;
    }
    if essence.ends_with("+json") || essence.ends_with("+xml") {
        return true;
    }
    matches!(
        essence.as_str(),
        "application/json"
            | "application/x-ndjson"
            | "application/problem+json"
            | "application/xml"
            | "application/javascript"
            | "application/ecmascript"
            | "application/x-javascript"
            | "application/wasm"
            | "application/yaml"
            | "application/x-yaml"
            | "application/toml"
            | "application/graphql"
            | "application/sql"
            | "application/x-sh"
            | "application/rtf"
            | "application/x-www-form-urlencoded"
            | "application/vnd.ms-fontobject"
            | "font/ttf"
            | "font/otf"
            | "image/svg+xml"
            | "image/bmp"
            | "image/x-icon"
            | "image/vnd.microsoft.icon"
    )
}

/// The essence (`type/subtype`, lower case) of a `Content-Type` value.
pub fn essence_of(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// What a request's `Accept-Encoding` says about `br` and `identity`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AcceptEncoding {
    /// q-value of `br` (0 = refused).
    pub br: f32,
    /// q-value of `identity` (0 = refused).
    pub identity: f32,
}

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Brotli,
    Identity,
    /// The client refuses identity and every coding we could apply: 406.
    NotAcceptable,
}

/// One `q` parameter: `0`, `1`, `0.x` with up to three decimals (§12.4.2);
/// anything else makes the element invalid.
fn parse_q(value: &str) -> Option<f32> {
    let value = value.trim();
    let valid = match value.as_bytes() {
        [b'0'] | [b'1'] => true,
        [b'0', b'.', rest @ ..] => rest.len() <= 3 && rest.iter().all(u8::is_ascii_digit),
        [b'1', b'.', rest @ ..] => rest.len() <= 3 && rest.iter().all(|b| *b == b'0'),
        _ => false,
    };
    valid.then(|| value.parse().ok()).flatten()
}

impl AcceptEncoding {
    /// Parses every `Accept-Encoding` line. Without the header, only
    /// identity is sent (what clients that never asked expect); an empty
    /// value means "identity only" (§12.5.3). Invalid elements are
    /// ignored rather than failing the request.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(header::ACCEPT_ENCODING).iter().peekable();
        if values.peek().is_none() {
            return Self {
                br: 0.0,
                identity: 1.0,
            };
        }
        let (mut br, mut identity, mut star) = (None, None, None);
        for value in values {
            let Ok(value) = value.to_str() else { continue };
            for element in value.split(',') {
                let mut parts = element.split(';');
                let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                if coding.is_empty() {
                    continue;
                }
                let mut q = Some(1.0f32);
                for param in parts {
                    let Some((name, value)) = param.split_once('=') else {
                        q = None;
                        break;
                    };
                    if name.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(value);
                    }
                }
                let Some(q) = q else { continue };
                let slot = match coding.as_str() {
                    "br" => &mut br,
                    "identity" => &mut identity,
                    "*" => &mut star,
                    _ => continue,
                };
                // The first mention wins (a repeat is the client's mistake).
                slot.get_or_insert(q);
            }
        }
        Self {
            br: br.or(star).unwrap_or(0.0),
            // Identity is acceptable unless refused by name or by `*;q=0`.
            identity: identity.or(star).unwrap_or(1.0),
        }
    }

    /// The choice for a representation that is `eligible` for Brotli (a
    /// compressible type, big enough, not a range). A client that refuses
    /// identity gets Brotli even when it is not worth it, or 406.
    pub fn choose(&self, eligible: bool) -> Choice {
        if eligible && self.br > 0.0 && self.br >= self.identity {
            Choice::Brotli
        } else if self.identity > 0.0 {
            Choice::Identity
        } else if self.br > 0.0 {
            Choice::Brotli
        } else {
            Choice::NotAcceptable
        }
    }
}

/// Adds `Accept-Encoding` to `Vary` (once).
pub fn vary_accept_encoding(headers: &mut HeaderMap) {
    add_vary(headers, "accept-encoding");
}

/// Adds `name` to `Vary` unless it is there already (or `*`).
pub fn add_vary(headers: &mut HeaderMap, name: &str) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            let v = v.trim();
            v == "*" || v.eq_ignore_ascii_case(name)
        });
    if !present && let Ok(value) = HeaderValue::from_str(name) {
        headers.append(header::VARY, value);
    }
}

/// The compressed representation's validators: a strong `ETag` becomes
/// weak (the same opaque tag, so `If-None-Match` matches either form under
/// weak comparison while `If-Match` — strong comparison — never accepts
/// the compressed form); `Content-Length` is unknown until the end.
pub fn mark_compressed(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    if let Some(etag) = headers.get(header::ETAG)
        && let Some(strong) = etag.to_str().ok().filter(|t| t.starts_with('"'))
        && let Ok(weak) = HeaderValue::from_str(&format!("W/{strong}"))
    {
        headers.insert(header::ETAG, weak);
    }
    vary_accept_encoding(headers);
}

/// The wire-compression budget: how many bodies may be compressed at once.
pub fn budget() -> &'static Arc<Semaphore> {
    static BUDGET: OnceLock<Arc<Semaphore>> = OnceLock::new();
    BUDGET.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Semaphore::new(cpus * 4))
    })
}

/// A permit to compress one body, or `None` when the budget is spent.
pub fn try_permit() -> Option<OwnedSemaphorePermit> {
    budget().clone().try_acquire_owned().ok()
}

type Decoder = BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>;

enum Engine {
    Encode(Box<BrotliEncoderStateStruct<StandardAlloc>>),
    Decode(Box<Decoder>),
}

/// What one step did.
struct Step {
    consumed: usize,
    produced: usize,
    done: bool,
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

impl Engine {
    fn encoder(quality: u32, size_hint: Option<u64>) -> Self {
        let mut state = BrotliEncoderStateStruct::new(StandardAlloc::default());
        state.set_parameter(BrotliEncoderParameter::BROTLI_PARAM_QUALITY, quality);
        state.set_parameter(BrotliEncoderParameter::BROTLI_PARAM_LGWIN, LGWIN);
        if let Some(hint) = size_hint {
            state.set_parameter(
                BrotliEncoderParameter::BROTLI_PARAM_SIZE_HINT,
                hint.min(u64::from(u32::MAX >> 2)) as u32,
            );
        }
        Self::Encode(Box::new(state))
    }

    fn decoder() -> Self {
        Self::Decode(Box::new(BrotliState::new(
            StandardAlloc::default(),
            StandardAlloc::default(),
            StandardAlloc::default(),
        )))
    }

    /// Consumes some of `input` and writes some output into `out`;
    /// `finish` says no input follows `input`.
    fn step(&mut self, input: &[u8], finish: bool, out: &mut [u8]) -> io::Result<Step> {
        let mut available_in = input.len();
        let mut in_offset = 0;
        let mut available_out = out.len();
        let mut out_offset = 0;
        match self {
            Self::Encode(state) => {
                let op = if finish {
                    BrotliEncoderOperation::BROTLI_OPERATION_FINISH
                } else {
                    BrotliEncoderOperation::BROTLI_OPERATION_PROCESS
                };
                let mut total = None;
                let ok = state.compress_stream(
                    op,
                    &mut available_in,
                    input,
                    &mut in_offset,
                    &mut available_out,
                    out,
                    &mut out_offset,
                    &mut total,
                    &mut |_, _, _, _| (),
                );
                if !ok {
                    return Err(io::Error::other("brotli encoder failed"));
                }
                Ok(Step {
                    consumed: in_offset,
                    produced: out_offset,
                    done: finish && available_in == 0 && state.is_finished(),
                })
            }
            Self::Decode(state) => {
                let mut total = 0;
                let result = BrotliDecompressStream(
                    &mut available_in,
                    &mut in_offset,
                    input,
                    &mut available_out,
                    &mut out_offset,
                    out,
                    &mut total,
                    state,
                );
                let done = match result {
                    BrotliResult::ResultSuccess => true,
                    BrotliResult::NeedsMoreOutput => false,
                    BrotliResult::NeedsMoreInput => {
                        if finish && available_in == 0 && out_offset == 0 {
                            return Err(invalid("truncated brotli stream"));
                        }
                        false
                    }
                    BrotliResult::ResultFailure => return Err(invalid("corrupt brotli stream")),
                };
                Ok(Step {
                    consumed: in_offset,
                    produced: out_offset,
                    done,
                })
            }
        }
    }
}

/// A stream transformed by an [`Engine`]; see the module documentation.
struct Adapter {
    upstream: ByteStream,
    engine: Engine,
    pending: Bytes,
    offset: usize,
    upstream_done: bool,
    finished: bool,
    buffer: Vec<u8>,
    /// Held for as long as the stream lives (wire compression budget).
    _permit: Option<OwnedSemaphorePermit>,
}

impl Adapter {
    async fn next_piece(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let input_left = self.offset < self.pending.len();
            if input_left || self.upstream_done {
                let step = self.engine.step(
                    &self.pending[self.offset..],
                    self.upstream_done,
                    &mut self.buffer,
                )?;
                self.offset += step.consumed;
                if step.done {
                    self.finished = true;
                }
                if step.produced > 0 {
                    return Ok(Some(Bytes::copy_from_slice(&self.buffer[..step.produced])));
                }
                if step.done || step.consumed > 0 {
                    continue;
                }
                // No progress with input at hand, or at the end: the
                // engines always move when they can, so the input is bad.
                return Err(invalid("truncated brotli stream"));
            }
            match self.upstream.next().await {
                Some(Ok(chunk)) => {
                    self.pending = chunk;
                    self.offset = 0;
                }
                Some(Err(error)) => return Err(error),
                None => self.upstream_done = true,
            }
        }
    }

    fn into_stream(self) -> ByteStream {
        Box::pin(futures::stream::try_unfold(
            self,
            |mut adapter| async move { Ok(adapter.next_piece().await?.map(|piece| (piece, adapter))) },
        ))
    }
}

fn adapt(upstream: ByteStream, engine: Engine, permit: Option<OwnedSemaphorePermit>) -> ByteStream {
    Adapter {
        upstream,
        engine,
        pending: Bytes::new(),
        offset: 0,
        upstream_done: false,
        finished: false,
        buffer: vec![0; OUT_CHUNK],
        _permit: permit,
    }
    .into_stream()
}

/// Brotli-compresses a stream at `quality`.
pub fn encode(
    upstream: ByteStream,
    quality: u32,
    size_hint: Option<u64>,
    permit: Option<OwnedSemaphorePermit>,
) -> ByteStream {
    adapt(upstream, Engine::encoder(quality, size_hint), permit)
}

/// Decompresses a Brotli stream (errors on corrupt or truncated input).
pub fn decode(upstream: ByteStream) -> ByteStream {
    adapt(upstream, Engine::decoder(), None)
}

/// Bytes `start..end` of a stream (identity bytes of a range of an object
/// stored compressed: decoded from the start, the prefix dropped).
pub fn slice(upstream: ByteStream, start: u64, end: u64) -> ByteStream {
    let stream = futures::stream::unfold(
        (upstream, 0u64),
        move |(mut upstream, mut position)| async move {
            loop {
                if position >= end {
                    return None;
                }
                match upstream.next().await {
                    None => return None,
                    Some(Err(error)) => return Some((Err(error), (upstream, end))),
                    Some(Ok(chunk)) => {
                        let chunk_start = position;
                        let chunk_end = position + chunk.len() as u64;
                        position = chunk_end;
                        let from = start.max(chunk_start);
                        let to = end.min(chunk_end);
                        if from < to {
                            let piece = chunk
                                .slice((from - chunk_start) as usize..(to - chunk_start) as usize);
                            return Some((Ok(piece), (upstream, position)));
                        }
                    }
                }
            }
        },
    );
    Box::pin(stream)
}

/// Compresses `data` at `quality` in one go (tests, benchmarks).
pub fn compress_bytes(data: &[u8], quality: u32) -> io::Result<Vec<u8>> {
    let mut engine = Engine::encoder(quality, Some(data.len() as u64));
    run_whole(&mut engine, data)
}

/// Decompresses `data` in one go, refusing output beyond `limit` bytes.
pub fn decompress_bytes(data: &[u8], limit: usize) -> io::Result<Vec<u8>> {
    let mut engine = Engine::decoder();
    let out = run_whole_limited(&mut engine, data, limit)?;
    Ok(out)
}

fn run_whole(engine: &mut Engine, data: &[u8]) -> io::Result<Vec<u8>> {
    run_whole_limited(engine, data, usize::MAX)
}

fn run_whole_limited(engine: &mut Engine, data: &[u8], limit: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buffer = vec![0u8; OUT_CHUNK];
    let mut offset = 0;
    loop {
        let step = engine.step(&data[offset..], true, &mut buffer)?;
        offset += step.consumed;
        out.extend_from_slice(&buffer[..step.produced]);
        if out.len() > limit {
            return Err(invalid("output exceeds the limit"));
        }
        if step.done {
            return Ok(out);
        }
        if step.consumed == 0 && step.produced == 0 {
            return Err(invalid("truncated brotli stream"));
        }
    }
}

/// Middleware of the JSON APIs: a successful (or problem) JSON answer of
/// at least [`MIN_SIZE`] bytes goes out Brotli-compressed to clients that
/// prefer `br`, within the wire budget. Answers that already carry a
/// `Content-Encoding`, ranges and HEAD answers are left alone.
pub async fn compress_json(request: Request, next: Next) -> Response {
    let accept = AcceptEncoding::from_headers(request.headers());
    let is_head = request.method() == Method::HEAD;
    let response = next.run(request).await;
    let essence = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(essence_of)
        .unwrap_or_default();
    if !compressible(&essence) {
        return response;
    }
    let mut response = response;
    vary_accept_encoding(response.headers_mut());
    if is_head
        || response.status() == StatusCode::PARTIAL_CONTENT
        || response.status() == StatusCode::NOT_MODIFIED
        || response.headers().contains_key(header::CONTENT_ENCODING)
    {
        return response;
    }
    let length = axum::body::HttpBody::size_hint(response.body()).exact();
    let eligible = length.is_some_and(|l| l >= MIN_SIZE && l as usize <= MAX_JSON_BUFFER);
    if accept.choose(eligible) != Choice::Brotli || !eligible {
        return response;
    }
    let Some(permit) = try_permit() else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let upstream: ByteStream = Box::pin(
        body.into_data_stream()
            .map(|chunk| chunk.map_err(io::Error::other)),
    );
    let stream = encode(upstream, WIRE_QUALITY, length, Some(permit));
    mark_compressed(&mut parts.headers);
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Keeps chunks of a stream in memory (tests).
pub async fn collect(mut stream: ByteStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A stream of the given chunks (tests, benchmarks).
pub fn stream_of(chunks: Vec<Bytes>) -> ByteStream {
    let chunks: VecDeque<io::Result<Bytes>> = chunks.into_iter().map(Ok).collect();
    Box::pin(futures::stream::iter(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(value: &str) -> AcceptEncoding {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).expect("value"),
        );
        AcceptEncoding::from_headers(&headers)
    }

    #[test]
    fn negotiation_matrix() {
        use Choice::*;
        let none = AcceptEncoding::from_headers(&HeaderMap::new());
        assert_eq!(none.choose(true), Identity);
        for (value, eligible, expected) in [
            ("br", true, Brotli),
            ("br", false, Identity),
            ("gzip, deflate, br", true, Brotli),
            ("BR;Q=1", true, Brotli),
            ("br;q=0", true, Identity),
            ("br;q=0.0", true, Identity),
            ("gzip", true, Identity),
            ("*", true, Brotli),
            ("*;q=0.5", true, Brotli),
            ("*;q=0", true, NotAcceptable),
            ("*;q=0", false, NotAcceptable),
            ("br;q=0, *", true, Identity),
            ("identity;q=0", true, NotAcceptable),
            ("identity;q=0, br", false, Brotli),
            ("identity;q=0, *;q=0.1", false, Brotli),
            ("br;q=0.5, identity", true, Identity),
            ("br;q=0.5, identity;q=0.4", true, Brotli),
            ("br;q=1.5", true, Identity),
            ("br;q=abc", true, Identity),
            ("br;q=0.1234", true, Identity),
            ("", true, Identity),
            ("identity", true, Identity),
            ("*;q=0, identity", true, Identity),
        ] {
            assert_eq!(ae(value).choose(eligible), expected, "{value:?} {eligible}");
        }
    }

    #[test]
    fn types() {
        for t in [
            "text/plain",
            "application/json",
            "application/vnd.api+json",
            "image/svg+xml",
            "application/wasm",
            "text/csv",
            "application/atom+xml",
        ] {
            assert!(compressible(t), "{t}");
        }
        for t in [
            "image/png",
            "image/jpeg",
            "video/mp4",
            "application/zip",
            "application/gzip",
            "font/woff2",
            "application/octet-stream",
            "application/pdf",
        ] {
            assert!(!compressible(t), "{t}");
        }
    }

    #[tokio::test]
    async fn streams_round_trip_in_bounded_pieces() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{{\"id\":{i},\"name\":\"item {}\"}}\n", i % 97).into_bytes())
            .collect();
        let chunks: Vec<Bytes> = text.chunks(7_777).map(Bytes::copy_from_slice).collect();
        let compressed = collect(encode(stream_of(chunks), WIRE_QUALITY, None, None))
            .await
            .expect("encode");
        assert!(compressed.len() * 5 < text.len());
        let pieces: Vec<Bytes> = compressed
            .chunks(1000)
            .map(Bytes::copy_from_slice)
            .collect();
        let mut decoded = decode(stream_of(pieces));
        let mut out = Vec::new();
        while let Some(piece) = decoded.next().await {
            let piece = piece.expect("piece");
            assert!(piece.len() <= OUT_CHUNK);
            out.extend_from_slice(&piece);
        }
        assert_eq!(out, text);
        let sliced = collect(slice(
            decode(stream_of(vec![Bytes::from(compressed.clone())])),
            10,
            70_000,
        ))
        .await
        .expect("slice");
        assert_eq!(sliced, &text[10..70_000]);
        // Truncated and corrupt input are errors, never panics.
        let truncated = Bytes::copy_from_slice(&compressed[..compressed.len() / 2]);
        assert!(collect(decode(stream_of(vec![truncated]))).await.is_err());
        assert!(
            collect(decode(stream_of(vec![Bytes::from_static(
                b"not brotli at all"
            )])))
            .await
            .is_err()
        );
        let empty = collect(encode(stream_of(vec![]), 5, None, None))
            .await
            .expect("empty");
        assert!(decompress_bytes(&empty, 10).expect("empty").is_empty());
    }

    #[tokio::test]
    async fn a_bomb_expands_one_piece_at_a_time() {
        // 256 MiB of zeros compress to a few hundred bytes.
        let zeros = Bytes::from(vec![0u8; 1 << 20]);
        let chunks = vec![zeros; 256];
        let bomb = collect(encode(stream_of(chunks), 5, None, None))
            .await
            .expect("bomb");
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let mut decoded = decode(stream_of(vec![Bytes::from(bomb)]));
        let first = decoded.next().await.expect("piece").expect("ok");
        assert!(first.len() <= OUT_CHUNK);
        assert!(decompress_bytes(&compress_bytes(&[0; 100_000], 5).expect("c"), 1000).is_err());
    }
}
