//! Remote encoders: a model served by Hugging Face text-embeddings-inference (`tei:URL`: `GET
//! /info`, `POST /embed`) or by an OpenAI-compatible endpoint (`openai:URL[#MODEL]`: `POST
//! {URL}/embeddings`). Embedding only: a remote model is not fine-tuned here.
//!
//! Texts go in batches no larger than the server allows (TEI's `max_client_batch_size`; a 413
//! halves the batch), a few requests in flight at once, with retries and backoff on 429, 503 and
//! dropped connections (honouring `Retry-After`), timeouts, progress and cancel. The API key comes
//! from `TRIPLETLAB_API_KEY` and is sent as a bearer token; it is never written anywhere else.

mod http;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use crate::core::embeddings::Embeddings;
use crate::core::jobs::{JobCtx, StageClock};
pub use http::HttpError;
use http::{Client, Reply};

/// The environment variable holding the API key.
pub const API_KEY_VAR: &str = "TRIPLETLAB_API_KEY";
/// Requests in flight at once.
const IN_FLIGHT: usize = 4;
/// Attempts of one batch before giving up on 429 / 503 / dropped connections.
const ATTEMPTS: usize = 8;
/// Texts per request where the server says nothing (OpenAI-compatible endpoints).
const DEFAULT_BATCH: usize = 64;

/// Which API a remote model speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// text-embeddings-inference.
    Tei,
    /// OpenAI's embeddings API (and compatible servers).
    OpenAi,
}

/// A remote model as given: `tei:URL` or `openai:URL[#MODEL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    /// The API.
    pub api: Api,
    /// The base URL (no trailing slash).
    pub url: String,
    /// The model name sent to an OpenAI-compatible endpoint.
    pub model: Option<String>,
}

impl RemoteSpec {
    /// Parses `tei:URL` or `openai:URL[#MODEL]`; `None` for anything else.
    pub fn parse(spec: &str) -> Option<Self> {
        let (api, rest) = if let Some(r) = spec.strip_prefix("tei:") {
            (Api::Tei, r)
        } else if let Some(r) = spec.strip_prefix("openai:") {
            (Api::OpenAi, r)
        } else {
            return None;
        };
        let (url, model) = match (api, rest.split_once('#')) {
            (Api::OpenAi, Some((u, m))) if !m.is_empty() => (u, Some(m.to_string())),
            _ => (rest, None),
        };
        Some(Self {
            api,
            url: url.trim_end_matches('/').to_string(),
            model,
        })
    }

    /// How it is shown to the user and recorded (never with a key).
    pub fn label(&self) -> String {
        match (self.api, &self.model) {
            (Api::Tei, _) => format!("tei:{}", self.url),
            (Api::OpenAi, Some(m)) => format!("openai:{}#{m}", self.url),
            (Api::OpenAi, None) => format!("openai:{}", self.url),
        }
    }
}

/// Why a remote model could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The request failed (connection, HTTP status, timeout).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The server answered something that is not what its API promises.
    #[error("{url}: {message}")]
    Protocol {
        /// The URL asked.
        url: String,
        /// What is wrong with the answer.
        message: String,
    },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// A connected remote model.
pub struct RemoteClient {
    spec: RemoteSpec,
    client: Client,
    /// The served model's id (TEI's `/info`), or the model name.
    pub model_id: String,
    /// The served model's revision (TEI's `model_sha`), if the server says.
    pub model_sha: Option<String>,
    /// Texts per request.
    pub max_batch: usize,
    /// Tokens per text the server keeps (TEI's `max_input_length`), if it says.
    pub max_input_length: Option<usize>,
    /// Width of the served vectors (from a first one-text request, which also checks the key).
    pub dim: usize,
}

impl RemoteClient {
    /// Connects: TEI's `/info` tells the model, its revision and the largest batch; an
    /// OpenAI-compatible endpoint is asked nothing until the first batch.
    pub fn connect(spec: &RemoteSpec) -> Result<Self, RemoteError> {
        let client = Client::new(std::env::var(API_KEY_VAR).ok().filter(|k| !k.is_empty()));
        let connected = match spec.api {
            Api::Tei => {
                let url = format!("{}/info", spec.url);
                let info = client.get_json(&url)?;
                let s = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_string);
                let n = |k: &str| info.get(k).and_then(Value::as_u64).map(|v| v as usize);
                Self {
                    model_id: s("model_id").unwrap_or_else(|| spec.url.clone()),
                    model_sha: s("model_sha"),
                    max_batch: n("max_client_batch_size").filter(|&b| b > 0).unwrap_or(32),
                    max_input_length: n("max_input_length"),
                    spec: spec.clone(),
                    client,
                    dim: 0,
                }
            }
            Api::OpenAi => Self {
                model_id: spec.model.clone().unwrap_or_default(),
                model_sha: None,
                max_batch: DEFAULT_BATCH,
                max_input_length: None,
                spec: spec.clone(),
                client,
                dim: 0,
            },
        };
        connected.probed()
    }

    /// Learns the width of the served vectors from one short text.
    fn probed(mut self) -> Result<Self, RemoteError> {
        let stop = AtomicBool::new(false);
        let probe = [String::from("dimension probe")];
        let v = loop {
            match self.request(&probe, &stop)? {
                Some(mut v) => break v.pop().unwrap_or_default(),
                None => continue,
            }
        };
        if v.is_empty() {
            return Err(RemoteError::Protocol {
                url: self.endpoint(),
                message: "the server returned an empty vector".into(),
            });
        }
        self.dim = v.len();
        Ok(self)
    }

    /// The model as given.
    pub fn spec(&self) -> &RemoteSpec {
        &self.spec
    }

    /// What identifies the vectors for the cache: the endpoint, the served model and revision
    /// (never the key).
    pub fn identity(&self) -> String {
        format!(
            "{}\0{}\0{}",
            self.spec.label(),
            self.model_id,
            self.model_sha.as_deref().unwrap_or("")
        )
    }

    /// Embeds texts (already with their prompts): rows in input order, as the server returns
    /// them (TEI normalises them). Progress per batch; cancel stops at the next batch.
    pub fn embed(&self, texts: &[String], ctx: &JobCtx) -> Result<Embeddings, RemoteError> {
        if texts.is_empty() {
            return Ok(Embeddings::new(1));
        }
        let queue: Mutex<VecDeque<(usize, usize)>> = Mutex::new(
            (0..texts.len())
                .step_by(self.max_batch)
                .map(|s| (s, (s + self.max_batch).min(texts.len())))
                .collect(),
        );
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<Result<(usize, Vec<Vec<f32>>), RemoteError>>();
        let clock = StageClock::start("embedding (remote)", "texts", texts.len());
        let mut rows: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        let mut failure = None;
        std::thread::scope(|scope| {
            for _ in 0..IN_FLIGHT.min(texts.len().div_ceil(self.max_batch)) {
                let (tx, queue, stop) = (tx.clone(), &queue, &stop);
                scope.spawn(move || loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Some((a, b)) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                    else {
                        return;
                    };
                    match self.request(&texts[a..b], stop) {
                        Ok(Some(v)) => {
                            if tx.send(Ok((a, v))).is_err() {
                                return;
                            }
                        }
                        // Too large for the server: the two halves go back in the queue.
                        Ok(None) if b - a > 1 => {
                            let mid = a + (b - a) / 2;
                            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                            q.push_front((mid, b));
                            q.push_front((a, mid));
                        }
                        Ok(None) => {
                            let _ = tx.send(Err(RemoteError::Protocol {
                                url: self.endpoint(),
                                message: "the server refuses even a single text as too large (413)"
                                    .into(),
                            }));
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                });
            }
            drop(tx);
            let mut done = 0;
            let mut dim = None;
            loop {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(Ok((start, vectors))) => {
                        for (k, v) in vectors.into_iter().enumerate() {
                            let d = *dim.get_or_insert(v.len());
                            if v.len() != d || d == 0 {
                                stop.store(true, Ordering::Relaxed);
                                failure.get_or_insert(RemoteError::Protocol {
                                    url: self.endpoint(),
                                    message: format!(
                                        "vectors of {} and of {d} dimensions in one run: the \
                                         server's model changed",
                                        v.len()
                                    ),
                                });
                                break;
                            }
                            rows[start + k] = Some(v);
                            done += 1;
                        }
                        ctx.progress(clock.at(done));
                    }
                    Ok(Err(e)) => {
                        stop.store(true, Ordering::Relaxed);
                        failure.get_or_insert(e);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if ctx.is_cancelled() {
                            stop.store(true, Ordering::Relaxed);
                            failure.get_or_insert(RemoteError::Cancelled);
                        }
                    }
                    // Every worker has returned.
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let dim = rows.iter().flatten().next().map_or(1, Vec::len);
        let mut data = Vec::with_capacity(texts.len() * dim);
        for (i, r) in rows.into_iter().enumerate() {
            let r = r.ok_or_else(|| RemoteError::Protocol {
                url: self.endpoint(),
                message: format!("no vector came back for text {i}"),
            })?;
            data.extend(r);
        }
        Ok(Embeddings::from_vec(dim, data))
    }

    /// The URL batches go to.
    fn endpoint(&self) -> String {
        match self.spec.api {
            Api::Tei => format!("{}/embed", self.spec.url),
            Api::OpenAi => format!("{}/embeddings", self.spec.url),
        }
    }

    /// One batch, retried on 429 / 503 / dropped connections with backoff; `Ok(None)` when the
    /// server says the batch is too large (413).
    fn request(
        &self,
        texts: &[String],
        stop: &AtomicBool,
    ) -> Result<Option<Vec<Vec<f32>>>, RemoteError> {
        let url = self.endpoint();
        let body = match self.spec.api {
            Api::Tei => json!({"inputs": texts, "truncate": true, "normalize": true}),
            Api::OpenAi => {
                let mut b = json!({"input": texts, "encoding_format": "base64"});
                if let Some(m) = &self.spec.model {
                    b["model"] = json!(m);
                }
                b
            }
        };
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            if stop.load(Ordering::Relaxed) {
                return Err(RemoteError::Cancelled);
            }
            match self.client.post_json(&url, &body) {
                Ok(Reply::Json(v)) => return self.parse(&url, v, texts.len()).map(Some),
                Ok(Reply::TooLarge) => return Ok(None),
                Ok(Reply::Retry { after }) if attempt < ATTEMPTS => {
                    let pause = after.unwrap_or(wait);
                    sleep_unless(stop, pause);
                    wait = (wait * 2).min(Duration::from_secs(20));
                }
                Ok(Reply::Retry { .. }) => {
                    return Err(RemoteError::Protocol {
                        url,
                        message: format!("still busy (429/503) after {ATTEMPTS} attempts"),
                    })
                }
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    sleep_unless(stop, wait);
                    wait = (wait * 2).min(Duration::from_secs(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// The vectors of an answer, in input order.
    fn parse(&self, url: &str, v: Value, n: usize) -> Result<Vec<Vec<f32>>, RemoteError> {
        let bad = |message: String| RemoteError::Protocol {
            url: url.to_string(),
            message,
        };
        let floats = |row: &Value| -> Option<Vec<f32>> {
            row.as_array()?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect()
        };
        let rows: Vec<Vec<f32>> = match self.spec.api {
            Api::Tei => v
                .as_array()
                .ok_or_else(|| bad("the answer is not a list of vectors".into()))?
                .iter()
                .map(|r| floats(r).ok_or_else(|| bad("a vector is not a list of numbers".into())))
                .collect::<Result<_, _>>()?,
            Api::OpenAi => {
                let data = v
                    .get("data")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad("the answer has no `data` list".into()))?;
                let mut rows: Vec<Option<Vec<f32>>> = vec![None; data.len()];
                for item in data {
                    let i = item
                        .get("index")
                        .and_then(Value::as_u64)
                        .map(|i| i as usize)
                        .filter(|&i| i < data.len())
                        .ok_or_else(|| bad("an item has no valid `index`".into()))?;
                    let e = item
                        .get("embedding")
                        .ok_or_else(|| bad("an item has no `embedding`".into()))?;
                    let vector = match e {
                        Value::String(b64) => decode_base64_f32(b64).ok_or_else(|| {
                            bad("an embedding is not base64 of little-endian f32".into())
                        })?,
                        other => floats(other)
                            .ok_or_else(|| bad("an embedding is not a list of numbers".into()))?,
                    };
                    rows[i] = Some(vector);
                }
                rows.into_iter()
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("two items have the same `index`".into()))?
            }
        };
        if rows.len() != n {
            return Err(bad(format!(
                "{} vectors came back for {n} texts",
                rows.len()
            )));
        }
        Ok(rows)
    }
}

/// Decodes base64 of little-endian f32 values.
fn decode_base64_f32(s: &str) -> Option<Vec<f32>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    (bytes.len() % 4 == 0).then(|| {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// Sleeps, waking early when `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20).min(end - std::time::Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let t = RemoteSpec::parse("tei:http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (t.api, t.url.as_str(), t.model.as_deref()),
            (Api::Tei, "http://127.0.0.1:8080", None)
        );
        let o =
            RemoteSpec::parse("openai:https://api.example.com/v1#text-embedding-3-small").unwrap();
        assert_eq!(o.model.as_deref(), Some("text-embedding-3-small"));
        assert_eq!(
            o.label(),
            "openai:https://api.example.com/v1#text-embedding-3-small"
        );
        assert!(RemoteSpec::parse("intfloat/e5-small-v2").is_none());
        assert_eq!(decode_base64_f32("AACAPw=="), Some(vec![1.0]));
    }
}
