//! The wall clock, injectable: production reads the system time; tests pin it, so time-based
//! answers (ETAs, traffic multipliers) are checked without sleeping. Only code whose answer
//! depends on "now" in a way tests must control takes a [`Clock`]; database timestamps still
//! come from Postgres's `now()`.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};

/// A clock: the system time unless pinned. Clones share the pin.
#[derive(Clone, Debug, Default)]
pub struct Clock(Arc<Mutex<Option<DateTime<Utc>>>>);

impl Clock {
    /// The current time (the pinned one, if set).
    pub fn now(&self) -> DateTime<Utc> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_else(Utc::now)
    }

    /// Pins the clock at `at` (`None` returns to the system time).
    pub fn set(&self, at: Option<DateTime<Utc>>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_clock_is_shared_by_clones_and_can_be_released() {
        let clock = Clock::default();
        let copy = clock.clone();
        let at = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
        clock.set(Some(at));
        assert_eq!(copy.now(), at);
        clock.set(None);
        assert!(copy.now() > at);
    }
}
