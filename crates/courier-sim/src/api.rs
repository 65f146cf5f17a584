//! The simulator's HTTP client: courier's public API as a client app calls it, with tokens
//! minted the way courier's own `courier token issue` mints them, and every answer counted by
//! status (the report's "HTTP responses by status"). Given several servers (API processes
//! behind no balancer), each party sticks to one, chosen by its id, as a load balancer with
//! affinity would spread them; 5xx answers and transport errors are timed from the client's
//! start, so a failover run can say when they happened.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::{EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Who a request is made as: a role and the id its token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum As {
    Operator(i64),
    Customer(i64),
    Restaurant(i64),
    Driver(i64),
}

impl As {
    fn role(self) -> &'static str {
        match self {
            As::Operator(_) => "operator",
            As::Customer(_) => "customer",
            As::Restaurant(_) => "restaurant",
            As::Driver(_) => "driver",
        }
    }

    fn subject(self) -> i64 {
        match self {
            As::Operator(id) | As::Customer(id) | As::Restaurant(id) | As::Driver(id) => id,
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: String,
    role: &'a str,
    iss: &'a str,
    iat: u64,
    exp: u64,
}

/// An answer: its status and its JSON body (`Null` when it had none or was not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl Answer {
    /// The body as `T`, if the answer was a success.
    pub fn ok<T: DeserializeOwned>(self) -> anyhow::Result<T> {
        anyhow::ensure!(
            self.status.is_success(),
            "answered {}: {}",
            self.status,
            self.body
        );
        serde_json::from_value(self.body).context("an unexpected body")
    }
}

/// The client shared by every simulated party.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    bases: Arc<[String]>,
    inner: Arc<Inner>,
}

struct Inner {
    key: EncodingKey,
    tokens: Mutex<HashMap<As, String>>,
    statuses: Mutex<BTreeMap<u16, u64>>,
    transport_errors: Mutex<u64>,
    started: Instant,
    /// Seconds since `started` of every 5xx answer and transport error.
    failures: Mutex<Vec<f64>>,
}

/// When the failed requests (5xx answers and transport errors) happened, in seconds since the
/// client started.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct FailureWindow {
    pub count: u64,
    pub first_s: Option<f64>,
    pub last_s: Option<f64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

/// How long a request may take before it counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime of the tokens the simulator mints.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

impl Api {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`, or several,
    /// comma-separated), signing tokens with the server's HS256 `secret`.
    pub fn new(base: &str, secret: &[u8]) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(64)
            .build()?;
        let bases: Vec<String> = base
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        anyhow::ensure!(!bases.is_empty(), "no server URL");
        Ok(Self {
            http,
            bases: bases.into(),
            inner: Arc::new(Inner {
                key: EncodingKey::from_secret(secret),
                tokens: Mutex::new(HashMap::new()),
                statuses: Mutex::new(BTreeMap::new()),
                transport_errors: Mutex::new(0),
                started: Instant::now(),
                failures: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The server `who` talks to.
    fn base(&self, who: As) -> &str {
        let index = usize::try_from(who.subject().unsigned_abs()).unwrap_or(0) % self.bases.len();
        &self.bases[index]
    }

    fn failed(&self) {
        if let Ok(mut failures) = self.inner.failures.lock() {
            failures.push(self.inner.started.elapsed().as_secs_f64());
        }
    }

    /// When the 5xx answers and transport errors so far happened.
    pub fn failure_window(&self) -> FailureWindow {
        let failures = self
            .inner
            .failures
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        FailureWindow {
            count: failures.len() as u64,
            first_s: failures.iter().copied().reduce(f64::min),
            last_s: failures.iter().copied().reduce(f64::max),
        }
    }

    fn token(&self, who: As) -> anyhow::Result<String> {
        if let Some(token) = self
            .inner
            .tokens
            .lock()
            .ok()
            .and_then(|tokens| tokens.get(&who).cloned())
        {
            return Ok(token);
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub: who.subject().to_string(),
            role: who.role(),
            iss: "courier",
            iat: now,
            exp: now + TOKEN_TTL.as_secs(),
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &self.inner.key)?;
        if let Ok(mut tokens) = self.inner.tokens.lock() {
            tokens.insert(who, token.clone());
        }
        Ok(token)
    }

    /// The `Authorization` header's value for `who` (`Bearer …`), for clients of their own.
    pub fn bearer(&self, who: As) -> anyhow::Result<String> {
        Ok(format!("Bearer {}", self.token(who)?))
    }

    /// Sends a request as `who`; counts its status. A transport failure is an error.
    pub async fn call(
        &self,
        who: As,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut request = self
            .http
            .request(method, format!("{}/v1{path}", self.base(who)))
            .bearer_auth(self.token(who)?);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                if let Ok(mut errors) = self.inner.transport_errors.lock() {
                    *errors += 1;
                }
                self.failed();
                return Err(error.into());
            }
        };
        let status = response.status();
        if status.is_server_error() {
            self.failed();
        }
        if let Ok(mut statuses) = self.inner.statuses.lock() {
            *statuses.entry(status.as_u16()).or_default() += 1;
        }
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok(Answer { status, body })
    }

    pub async fn get(&self, who: As, path: &str) -> anyhow::Result<Answer> {
        self.call(who, Method::GET, path, None, &[]).await
    }

    pub async fn post(
        &self,
        who: As,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<Answer> {
        self.call(who, Method::POST, path, Some(body), &[]).await
    }

    /// Answers counted so far, by status.
    pub fn statuses(&self) -> BTreeMap<u16, u64> {
        self.inner
            .statuses
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Requests that got no answer (connection refused or reset, timeout).
    pub fn transport_errors(&self) -> u64 {
        self.inner.transport_errors.lock().map(|e| *e).unwrap_or(0)
    }
}
