//! Rate limits shared by every API process: a generic cell rate algorithm (GCRA) over one
//! Valkey key per (route class, principal), so two processes draw on one budget.
//!
//! A limit is a steady rate and a burst: `5/s:10` lets ten requests through at once, then one
//! every 200 ms. The key holds the "theoretical arrival time" of the next request; a request is
//! allowed when that time is less than `burst` intervals ahead of now, and each allowed request
//! moves it one interval on. The key expires once the bucket is full again, so idle clients
//! cost nothing. Time is Valkey's (`TIME`), so processes with skewed clocks agree.
//!
//! Checks go to Valkey in groups, like location reports ([`crate::location`]): one task sends
//! every check waiting while the previous call is in flight, in one script call that answers
//! each. A lone check goes out at once; at 10K requests/s a group holds a handful. One round
//! trip per check at most, far fewer under load. A driver's location report, the busiest
//! route, costs no round trip of its own: the location ingest script runs the same algorithm
//! ([`GCRA`]) on the report's bucket before it applies the report.
//!
//! What a route class's limit is, and what happens when Valkey cannot answer (fail open or
//! closed), is [`Limits`]; the HTTP side (`429`, `Retry-After`, `RateLimit-*`) is
//! `crate::api::ratelimit`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::valkey::Valkey;

/// Checks waiting for a script call, at most.
const QUEUE: usize = 16_384;
/// Checks per script call, at most.
const GROUP: usize = 256;
/// Hash tags the buckets are spread over (see [`RateLimiter::key`]).
const KEY_SHARDS: u16 = 16;

/// The GCRA as Lua functions, for every script that checks a limit (this module's and the
/// location ingest): `valkey_now()` is Valkey's clock in ms; `gcra(key, now, interval, burst)`
/// counts one request against the bucket at `key` (emission interval in ms) and answers
/// allowed (1/0), remaining, retry after (ms), full again after (ms).
pub const GCRA: &str = r"
local function valkey_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function gcra(key, now, interval, burst)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local next_tat = tat + interval
  local allow_at = next_tat - interval * burst
  if now < allow_at then
    return {0, 0, allow_at - now, tat - now}
  end
  redis.call('SET', key, next_tat, 'PX', next_tat - now)
  return {1, math.floor((now - allow_at) / interval), 0, next_tat - now}
end
";

/// The checks of a group (after [`GCRA`]). `KEYS[i]` is a bucket; `ARGV[2i-1]`, `ARGV[2i]` its
/// emission interval (ms) and burst. Answers [`gcra`'s four numbers](GCRA) per key.
const CHECKS: &str = r"
local now = valkey_now()
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = gcra(key, now, tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]))
end
return out
";

/// A steady rate and a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Requests allowed at once from a full bucket.
    pub burst: u32,
    /// Time between requests at the steady rate.
    pub interval: Duration,
}

impl Limit {
    /// `per` requests per `unit`, with `burst`.
    pub fn new(per: u32, unit: Duration, burst: u32) -> Option<Self> {
        let interval = unit.checked_div(per)?;
        (per > 0 && burst > 0 && interval >= Duration::from_millis(1))
            .then_some(Self { burst, interval })
    }

    /// The emission interval in whole milliseconds, as the scripts take it.
    pub fn interval_ms(self) -> u64 {
        u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX)
    }

    /// The same limit `factor` times as generous (operators).
    pub fn scaled(self, factor: u32) -> Self {
        Self {
            burst: self.burst.saturating_mul(factor.max(1)),
            interval: (self.interval / factor.max(1)).max(Duration::from_millis(1)),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_s = 1000.0 / self.interval.as_millis().max(1) as f64;
        write!(f, "{per_s:.3}/s:{}", self.burst)
    }
}

impl FromStr for Limit {
    type Err = String;

    /// `5/s:10`, `5/m` (burst = rate), `100/h:20`.
    fn from_str(raw: &str) -> Result<Self, String> {
        let bad = || format!("`{raw}` is not a limit like 5/s:10 (rate per s, m or h, then burst)");
        let (rate, burst) = match raw.trim().split_once(':') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (raw.trim(), None),
        };
        let (per, unit) = rate.split_once('/').ok_or_else(bad)?;
        let per: u32 = per.trim().parse().map_err(|_| bad())?;
        let unit = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let burst = match burst {
            Some(b) => b.trim().parse().map_err(|_| bad())?,
            None => per,
        };
        Limit::new(per, unit, burst).ok_or_else(bad)
    }
}

/// What a route is, for its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::EnumString, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum RouteClass {
    /// A driver's single location report.
    Location,
    /// Many location reports in one request.
    LocationBatch,
    /// Placing an order.
    OrderCreate,
    /// Other changes (POST, PATCH, DELETE).
    Write,
    /// Reads.
    Read,
    /// Opening a live stream (SSE).
    Stream,
    /// A request without a valid token, per client IP.
    Unauthenticated,
}

impl RouteClass {
    /// Every class.
    pub const ALL: [RouteClass; 7] = [
        RouteClass::Location,
        RouteClass::LocationBatch,
        RouteClass::OrderCreate,
        RouteClass::Write,
        RouteClass::Read,
        RouteClass::Stream,
        RouteClass::Unauthenticated,
    ];

    /// Its name in settings and keys.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether a request of this class goes through when Valkey cannot answer: reads and
    /// location reports do (losing them costs more than an unlimited minute); order creation
    /// does not (an unlimited client could flood restaurants and the payment provider).
    pub fn fails_open(self) -> bool {
        !matches!(self, RouteClass::OrderCreate)
    }

    /// The default limit.
    fn default_limit(self) -> Limit {
        let limit = |per, unit_s, burst| {
            Limit::new(per, Duration::from_secs(unit_s), burst).unwrap_or(Limit {
                burst: 1,
                interval: Duration::from_secs(1),
            })
        };
        match self {
            RouteClass::Location => limit(5, 1, 10),
            RouteClass::LocationBatch => limit(20, 1, 40),
            RouteClass::OrderCreate => limit(6, 60, 5),
            RouteClass::Write => limit(10, 1, 30),
            RouteClass::Read => limit(50, 1, 100),
            RouteClass::Stream => limit(1, 1, 10),
            RouteClass::Unauthenticated => limit(5, 1, 20),
        }
    }
}

/// The limits of every class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Off: nothing is limited (and no Valkey call is made).
    pub enabled: bool,
    /// Per class, in [`RouteClass::ALL`] order.
    per_class: [Limit; 7],
    /// Operators' limits are the others' times this.
    pub operator_factor: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            enabled: true,
            per_class: RouteClass::ALL.map(RouteClass::default_limit),
            operator_factor: 10,
        }
    }
}

impl Limits {
    /// The default limits, on or off, with operators' `operator_factor`.
    pub fn new(enabled: bool, operator_factor: u32) -> Self {
        Self {
            enabled,
            operator_factor,
            ..Self::default()
        }
    }

    /// Nothing limited.
    pub fn disabled() -> Self {
        Self::new(false, 1)
    }

    /// The limit of `class`.
    pub fn of(&self, class: RouteClass) -> Limit {
        let index = RouteClass::ALL
            .iter()
            .position(|c| *c == class)
            .unwrap_or_default();
        self.per_class[index]
    }

    /// These limits with `overrides` (`class=limit,…`, e.g. `location=5/s:10,order_create=6/m:5`).
    pub fn with_overrides(mut self, overrides: &str) -> Result<Self, String> {
        for item in overrides
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            let (class, limit) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` is not class=limit"))?;
            let class: RouteClass = class.trim().parse().map_err(|_| {
                let known: Vec<&str> = RouteClass::ALL.iter().map(|c| c.as_str()).collect();
                format!(
                    "unknown route class `{class}` (known: {})",
                    known.join(", ")
                )
            })?;
            let index = RouteClass::ALL
                .iter()
                .position(|c| *c == class)
                .unwrap_or_default();
            self.per_class[index] = limit.parse()?;
        }
        Ok(self)
    }
}

/// A check's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The limit checked against.
    pub limit: Limit,
    /// Requests left in the burst after this one.
    pub remaining: u64,
    /// When refused: how long until one would be allowed.
    pub retry_after: Duration,
    /// How long until the bucket is full again.
    pub reset: Duration,
}

impl Verdict {
    /// The verdict of `limit` from [`GCRA`]'s four numbers.
    pub fn of(
        limit: Limit,
        (allowed, remaining, retry_ms, reset_ms): (i64, u64, u64, u64),
    ) -> Self {
        Self {
            allowed: allowed == 1,
            limit,
            remaining,
            retry_after: Duration::from_millis(retry_ms),
            reset: Duration::from_millis(reset_ms),
        }
    }
}

struct Pending {
    key: String,
    limit: Limit,
    reply: oneshot::Sender<redis::RedisResult<Verdict>>,
}

/// The shared limiter. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    limits: Limits,
    valkey: Valkey,
    tx: mpsc::Sender<Pending>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter on `valkey`; its grouping task runs on the current Tokio runtime.
    pub fn new(valkey: Valkey, limits: Limits) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(valkey.clone(), rx));
        Self { limits, valkey, tx }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The bucket of `class` for `who` (`driver:42`, `ip:10.0.0.1`). Its hash tag is one of
    /// [`KEY_SHARDS`], chosen by `who`: on a cluster the buckets spread over the nodes, and
    /// checks waiting together need one script call per shard, not one per bucket.
    pub fn key(&self, class: RouteClass, who: &str) -> String {
        let shard = crate::valkey::slot(who) % KEY_SHARDS;
        self.valkey
            .key(&format!("rl:{{rl{shard}}}:{}:{who}", class.as_str()))
    }

    /// Counts one request against `limit` in the bucket at `key` ([`RateLimiter::key`], or
    /// another script's bucket of the same algorithm).
    pub async fn check(&self, key: String, limit: Limit) -> redis::RedisResult<Verdict> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { key, limit, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "the rate limiter stopped"))
}

/// Sends every waiting check, in one script call per round trip and shard (a script's keys
/// must share a slot on a cluster; on one node every key is of shard 0), until every handle is
/// gone.
async fn run(valkey: Valkey, mut rx: mpsc::Receiver<Pending>) {
    let script = redis::Script::new(&format!("{GCRA}{CHECKS}"));
    let mut group: Vec<Pending> = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut group, GROUP).await > 0 {
        let mut shards: HashMap<u16, Vec<Pending>> = HashMap::new();
        for pending in group.drain(..) {
            shards
                .entry(valkey.shard_of(&pending.key))
                .or_default()
                .push(pending);
        }
        futures::future::join_all(
            shards
                .into_values()
                .map(|checks| check_shard(&valkey, &script, checks)),
        )
        .await;
    }
}

/// Runs the checks of one shard in one script call and answers each.
async fn check_shard(valkey: &Valkey, script: &redis::Script, checks: Vec<Pending>) {
    let mut invocation = script.prepare_invoke();
    for pending in &checks {
        invocation
            .key(&pending.key)
            .arg(pending.limit.interval_ms())
            .arg(pending.limit.burst);
    }
    let mut conn = valkey.connection();
    let answers: redis::RedisResult<Vec<(i64, u64, u64, u64)>> =
        invocation.invoke_async(&mut conn).await;
    match answers {
        Ok(answers) if answers.len() == checks.len() => {
            for (pending, answer) in checks.into_iter().zip(answers) {
                let _ = pending.reply.send(Ok(Verdict::of(pending.limit, answer)));
            }
        }
        Ok(_) => {
            for pending in checks {
                let _ = pending.reply.send(Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "the rate-limit script answered a different number of checks",
                ))));
            }
        }
        Err(error) => {
            for pending in checks {
                let _ = pending.reply.send(Err(redis::RedisError::from((
                    error.kind(),
                    "rate-limit check failed",
                    error.to_string(),
                ))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_or_without_a_burst() {
        assert_eq!(
            "5/s:10".parse::<Limit>(),
            Ok(Limit {
                burst: 10,
                interval: Duration::from_millis(200)
            })
        );
        assert_eq!(
            "6/m".parse::<Limit>(),
            Ok(Limit {
                burst: 6,
                interval: Duration::from_secs(10)
            })
        );
        for bad in ["", "5", "5/d", "0/s", "5/s:0", "x/s", "5/s:y", "5000/s"] {
            assert!(bad.parse::<Limit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides_replace_one_class_and_name_unknown_ones() {
        let limits = Limits::default()
            .with_overrides("location=2/s:4, order_create=1/m:1")
            .expect("valid");
        assert_eq!(limits.of(RouteClass::Location).burst, 4);
        assert_eq!(
            limits.of(RouteClass::OrderCreate).interval,
            Duration::from_secs(60)
        );
        assert_eq!(
            limits.of(RouteClass::Read),
            Limits::default().of(RouteClass::Read)
        );
        let unknown = Limits::default()
            .with_overrides("teleport=1/s")
            .expect_err("unknown");
        assert!(unknown.contains("known: location"), "{unknown}");
        assert!(Limits::default().with_overrides("location").is_err());
    }

    #[test]
    fn only_order_creation_fails_closed() {
        let closed: Vec<RouteClass> = RouteClass::ALL
            .into_iter()
            .filter(|c| !c.fails_open())
            .collect();
        assert_eq!(closed, [RouteClass::OrderCreate]);
    }

    #[test]
    fn operators_get_a_multiple() {
        let limit = Limit {
            burst: 10,
            interval: Duration::from_millis(200),
        };
        assert_eq!(
            limit.scaled(10),
            Limit {
                burst: 100,
                interval: Duration::from_millis(20)
            }
        );
        assert_eq!(limit.scaled(0), limit);
    }
}
