//! A circuit breaker for the candidate lookup, with the spec's settings (opossum's: 10 s call
//! timeout, opens at 50% errors, tries again after 30 s).
//!
//! Why our own: the maintained crate, `failsafe` 1.3, has no call timeout, lets every call
//! through while half-open (ours lets one trial through and refuses the rest), and reads time
//! from its own clock. Here the decision logic takes the current [`Instant`] as an argument,
//! so the tests drive time by hand.
//!
//! - **Closed**: calls go through; outcomes of the last [`BreakerSettings::window`] are kept.
//!   Once at least [`BreakerSettings::min_calls`] calls are in the window and the failed share
//!   reaches the threshold, the breaker opens.
//! - **Open**: calls are refused at once (no load on a struggling Valkey, no job stuck for
//!   10 s) until the reset timeout has passed.
//! - **Half-open**: one trial call goes through, others are refused; its success closes the
//!   breaker with a clean window, its failure opens it again.
//!
//! The state is exported as the `circuit_breaker_state{breaker}` gauge: 0 closed, 1 open,
//! 2 half-open.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the breaker-state gauge.
pub const STATE_GAUGE: &str = "circuit_breaker_state";

/// How a breaker decides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerSettings {
    /// A call taking longer counts as failed.
    pub timeout: Duration,
    /// Failed share of the window at which the breaker opens.
    pub error_threshold: f64,
    /// How long the breaker stays open before a trial call.
    pub reset_timeout: Duration,
    /// How far back outcomes count.
    pub window: Duration,
    /// Fewest calls in the window before the error share means anything.
    pub min_calls: usize,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            error_threshold: 0.5,
            reset_timeout: Duration::from_secs(30),
            window: Duration::from_secs(10),
            min_calls: 5,
        }
    }
}

/// Where a breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// Why a guarded call did not produce a value.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker is open (or a trial call is in flight): the call was not made.
    #[error("circuit open")]
    Open,
    /// The call took longer than the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The call failed.
    #[error(transparent)]
    Failed(E),
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { trial_running: bool },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    outcomes: VecDeque<(Instant, bool)>,
}

/// A named circuit breaker. Share it (it is `Sync`); one per guarded dependency.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(name: &'static str, settings: BreakerSettings) -> Self {
        metrics::gauge!(STATE_GAUGE, "breaker" => name).set(BreakerState::Closed.gauge());
        Self {
            name,
            settings,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                outcomes: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the state half-written (every update is
        // a single assignment), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state at `now`.
    pub fn state_at(&self, now: Instant) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now >= until => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may start at `now`; a `true` must be followed by [`Self::record`].
    pub fn try_acquire(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Closed => true,
            Phase::Open { until } if now >= until => {
                inner.phase = Phase::HalfOpen {
                    trial_running: true,
                };
                self.publish(BreakerState::HalfOpen);
                true
            }
            Phase::Open { .. } => false,
            Phase::HalfOpen {
                ref mut trial_running,
            } => !std::mem::replace(trial_running, true),
        }
    }

    /// Records the outcome of a call that started with [`Self::try_acquire`].
    pub fn record(&self, now: Instant, ok: bool) {
        let mut inner = self.lock();
        match inner.phase {
            Phase::HalfOpen { .. } if ok => {
                inner.phase = Phase::Closed;
                inner.outcomes.clear();
                drop(inner);
                tracing::info!(breaker = self.name, "circuit closed");
                self.publish(BreakerState::Closed);
            }
            Phase::HalfOpen { .. } => self.open(inner, now),
            Phase::Open { .. } => {}
            Phase::Closed => {
                inner.outcomes.push_back((now, ok));
                let horizon = now.checked_sub(self.settings.window);
                while let Some(&(at, _)) = inner.outcomes.front() {
                    if horizon.is_some_and(|h| at < h) {
                        inner.outcomes.pop_front();
                    } else {
                        break;
                    }
                }
                let calls = inner.outcomes.len();
                let failed = inner.outcomes.iter().filter(|(_, ok)| !ok).count();
                if calls >= self.settings.min_calls
                    && failed as f64 >= calls as f64 * self.settings.error_threshold
                {
                    self.open(inner, now);
                }
            }
        }
    }

    fn open(&self, mut inner: std::sync::MutexGuard<'_, Inner>, now: Instant) {
        inner.phase = Phase::Open {
            until: now + self.settings.reset_timeout,
        };
        inner.outcomes.clear();
        drop(inner);
        tracing::warn!(
            breaker = self.name,
            reset_after = ?self.settings.reset_timeout,
            "circuit opened"
        );
        self.publish(BreakerState::Open);
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!(STATE_GAUGE, "breaker" => self.name).set(state.gauge());
    }

    /// Runs `call` through the breaker, bounded by the timeout.
    pub async fn call<T, E, F>(&self, call: F) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        if !self.try_acquire(Instant::now()) {
            return Err(BreakerError::Open);
        }
        let outcome = match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(BreakerError::Failed(e)),
            Err(_) => Err(BreakerError::Timeout(self.settings.timeout)),
        };
        self.record(Instant::now(), outcome.is_ok());
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new("test", BreakerSettings::default())
    }

    fn calls(b: &CircuitBreaker, at: Instant, outcomes: &[bool]) {
        for &ok in outcomes {
            assert!(b.try_acquire(at), "closed breakers let calls through");
            b.record(at, ok);
        }
    }

    #[test]
    fn stays_closed_below_the_error_threshold_or_the_minimum_volume() {
        let b = breaker();
        let t0 = Instant::now();
        calls(&b, t0, &[false, false, false, false]);
        assert_eq!(b.state_at(t0), BreakerState::Closed, "4 calls are too few");
        let b = breaker();
        calls(&b, t0, &[true, true, true, false, false, true]);
        assert_eq!(b.state_at(t0), BreakerState::Closed, "2 of 6 is below 50%");
    }

    #[test]
    fn opens_at_half_failures_and_refuses_calls() {
        let b = breaker();
        let t0 = Instant::now();
        calls(&b, t0, &[true, false, true, false, true]);
        assert_eq!(b.state_at(t0), BreakerState::Closed);
        calls(&b, t0, &[false]);
        assert_eq!(b.state_at(t0), BreakerState::Open, "3 of 6 is 50%");
        assert!(!b.try_acquire(t0 + Duration::from_secs(29)));
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let b = breaker();
        let t0 = Instant::now();
        calls(&b, t0, &[false, false, false, false]);
        // Eleven seconds later the four failures no longer count.
        let later = t0 + Duration::from_secs(11);
        calls(&b, later, &[true, true, true, true, false]);
        assert_eq!(b.state_at(later), BreakerState::Closed);
    }

    #[test]
    fn half_open_allows_one_trial_whose_success_closes() {
        let b = breaker();
        let t0 = Instant::now();
        calls(&b, t0, &[false; 5]);
        let reset = t0 + Duration::from_secs(30);
        assert_eq!(b.state_at(reset), BreakerState::HalfOpen);
        assert!(b.try_acquire(reset), "the trial call");
        assert!(!b.try_acquire(reset), "only one trial at a time");
        b.record(reset, true);
        assert_eq!(b.state_at(reset), BreakerState::Closed);
        assert!(b.try_acquire(reset));
    }

    #[test]
    fn a_failed_trial_opens_again_for_a_full_reset_timeout() {
        let b = breaker();
        let t0 = Instant::now();
        calls(&b, t0, &[false; 5]);
        let reset = t0 + Duration::from_secs(30);
        assert!(b.try_acquire(reset));
        b.record(reset, false);
        assert_eq!(b.state_at(reset), BreakerState::Open);
        assert!(!b.try_acquire(reset + Duration::from_secs(29)));
        assert!(b.try_acquire(reset + Duration::from_secs(30)));
    }

    #[tokio::test]
    async fn slow_calls_time_out_and_count_as_failures() {
        let b = CircuitBreaker::new(
            "slow",
            BreakerSettings {
                timeout: Duration::from_millis(20),
                min_calls: 1,
                ..BreakerSettings::default()
            },
        );
        let slow = b
            .call(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, std::io::Error>(1)
            })
            .await;
        assert!(matches!(slow, Err(BreakerError::Timeout(_))));
        let refused = b.call(async { Ok::<_, std::io::Error>(2) }).await;
        assert!(matches!(refused, Err(BreakerError::Open)));
    }

    #[tokio::test]
    async fn successful_calls_pass_their_value_through() {
        let b = breaker();
        let value = b.call(async { Ok::<_, std::io::Error>(7) }).await;
        assert!(matches!(value, Ok(7)));
        let failed = b
            .call(async { Err::<i32, _>(std::io::Error::other("down")) })
            .await;
        assert!(matches!(failed, Err(BreakerError::Failed(_))));
    }
}
