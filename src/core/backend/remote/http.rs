//! JSON over HTTP for the remote encoders (ureq, synchronous, with timeouts), and errors that say
//! what went wrong in terms a user can act on: the server is not running, the key is refused,
//! the route does not exist, the server's own message for a bad request.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

/// Largest answer read (a batch of vectors as JSON).
const ANSWER_LIMIT_BYTES: u64 = 512 << 20;

/// An HTTP client with the bearer key, if any.
pub(super) struct Client {
    agent: ureq::Agent,
    key: Option<String>,
}

/// A successful exchange, or one the caller handles.
pub(super) enum Reply {
    /// 2xx with a JSON body.
    Json(Value),
    /// 413: the batch is too large for the server.
    TooLarge,
    /// 429 or 503: try again (after the server's `Retry-After`, when it gives one).
    Retry {
        /// The server's wait.
        after: Option<Duration>,
    },
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Nothing listens there, or the name does not resolve.
    #[error(
        "cannot connect to {url}: {detail} (is the server running, and is the address right?)"
    )]
    Connect {
        /// The URL.
        url: String,
        /// The OS's words.
        detail: String,
    },
    /// The connection dropped or timed out.
    #[error("{url}: {detail}")]
    Io {
        /// The URL.
        url: String,
        /// What happened.
        detail: String,
    },
    /// 401 / 403.
    #[error(
        "{url} refused the request (HTTP {status}: {message}): set the API key in \
         TRIPLETLAB_API_KEY (sent as a bearer token), or check it"
    )]
    Unauthorized {
        /// The URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// 404.
    #[error(
        "{url} does not exist (HTTP 404): check the address; a text-embeddings-inference server \
         is given as tei:URL (it answers /info and /embed), an OpenAI-compatible one as \
         openai:URL (it answers URL/embeddings, e.g. https://host/v1)"
    )]
    NotFound {
        /// The URL.
        url: String,
    },
    /// Any other status, with the server's message (422 / 400 explain what they refuse).
    #[error("{url} answered HTTP {status}: {message}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The answer is not JSON.
    #[error("{url} answered something that is not JSON: {detail}")]
    NotJson {
        /// The URL.
        url: String,
        /// The parser's words.
        detail: String,
    },
}

impl HttpError {
    /// True for a dropped connection or a timeout: worth another attempt.
    pub(super) fn is_transient(&self) -> bool {
        matches!(self, HttpError::Io { .. })
    }
}

/// The server's message in an error body: `{"error": ...}` (TEI), `{"error": {"message": ...}}`
/// (OpenAI), or the text itself.
fn message_of(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        let e = v
            .get("error")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))?;
        Some(match e {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| e.to_string(), str::to_string),
            other => other.to_string(),
        })
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    let mut short: String = text.chars().take(500).collect();
    if text.chars().count() > 500 {
        short.push_str("...");
    }
    if short.is_empty() {
        "no message".into()
    } else {
        short
    }
}

fn read_body(r: ureq::Response) -> std::io::Result<String> {
    let mut s = String::new();
    r.into_reader()
        .take(ANSWER_LIMIT_BYTES)
        .read_to_string(&mut s)?;
    Ok(s)
}

impl Client {
    pub(super) fn new(key: Option<String>) -> Self {
        Self {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout_read(Duration::from_secs(120))
                .timeout_write(Duration::from_secs(60))
                .build(),
            key,
        }
    }

    fn send(
        &self,
        req: ureq::Request,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Reply, HttpError> {
        let req = match &self.key {
            Some(k) => req.set("Authorization", &format!("Bearer {k}")),
            None => req,
        };
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let io = |detail: String| HttpError::Io {
            url: url.to_string(),
            detail,
        };
        match result {
            Ok(r) => {
                let text = read_body(r).map_err(|e| io(e.to_string()))?;
                serde_json::from_str(&text)
                    .map(Reply::Json)
                    .map_err(|e| HttpError::NotJson {
                        url: url.to_string(),
                        detail: e.to_string(),
                    })
            }
            Err(ureq::Error::Status(status, r)) => {
                let after = r
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map(|s| Duration::from_secs_f64(s.clamp(0.0, 120.0)));
                let message = message_of(&read_body(r).unwrap_or_default());
                let url = url.to_string();
                match status {
                    413 => Ok(Reply::TooLarge),
                    429 | 503 => Ok(Reply::Retry { after }),
                    401 | 403 => Err(HttpError::Unauthorized {
                        url,
                        status,
                        message,
                    }),
                    404 => Err(HttpError::NotFound { url }),
                    _ => Err(HttpError::Status {
                        url,
                        status,
                        message,
                    }),
                }
            }
            Err(ureq::Error::Transport(t)) => match t.kind() {
                ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns => {
                    Err(HttpError::Connect {
                        url: url.to_string(),
                        detail: t.message().map_or_else(|| t.to_string(), str::to_string),
                    })
                }
                _ => Err(io(t.to_string())),
            },
        }
    }

    /// GET a JSON document (no retries: used once, to connect).
    pub(super) fn get_json(&self, url: &str) -> Result<Value, HttpError> {
        match self.send(self.agent.get(url), url, None)? {
            Reply::Json(v) => Ok(v),
            Reply::TooLarge | Reply::Retry { .. } => Err(HttpError::Status {
                url: url.to_string(),
                status: 503,
                message: "the server is busy; try again".into(),
            }),
        }
    }

    /// POST a JSON body.
    pub(super) fn post_json(&self, url: &str, body: &Value) -> Result<Reply, HttpError> {
        self.send(self.agent.post(url), url, Some(body))
    }
}
