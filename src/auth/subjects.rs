//! Whether a token's subject exists, in the role the token claims.
//!
//! A signed token proves who minted it, not that its subject is still (or ever was) what it
//! says: a customer token naming a user that does not exist would reach the order insert (a
//! foreign-key violation), and one naming a driver's user account would place orders as a
//! customer. So every request's principal is looked up: customers and operators in `users`
//! (with their role), drivers in `drivers`, restaurants in `restaurants`.
//!
//! Nothing in courier deletes a user, driver or restaurant or changes a user's role, so what
//! was found stays true:
//! - Drivers, whose reports are the hot path (10K a second), are looked up in a set of every
//!   driver id, loaded once and then extended: a miss fetches the drivers created since the last
//!   load together with the missed ids, in one query under a lock, so a restarted server facing
//!   100K drivers' first reports makes one query, not 100K. The batch endpoint checks its items
//!   against the same set.
//! - Other subjects are remembered for [`REMEMBER_FOR`] once found.
//!
//! Unknown subjects are not remembered, so one created a moment later is accepted at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::auth::{Principal, Role};

/// How long a found subject is remembered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(300);
/// Most subjects remembered; past it the memory starts over (a burst of lookups, no leak).
const MAX_REMEMBERED: usize = 200_000;

/// What the directory says of a principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectCheck {
    /// The subject exists in the token's role.
    Valid,
    /// No such user, driver or restaurant.
    Unknown,
    /// The user exists, in another role.
    OtherRole(Role),
}

/// The lookup, with its memory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Subjects {
    db: PgPool,
    known: Arc<RwLock<HashMap<Principal, Instant>>>,
    drivers: Arc<RwLock<DriverIds>>,
    /// Held while fetching driver ids, so concurrent misses make one query.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

/// Every driver id seen so far.
#[derive(Debug, Default)]
struct DriverIds {
    ids: HashSet<i64>,
    /// Every driver with a higher id was created after the last fetch.
    fetched_up_to: i64,
}

impl DriverIds {
    fn missing(&self, ids: &[i64]) -> Vec<i64> {
        ids.iter()
            .copied()
            .filter(|id| !self.ids.contains(id))
            .collect()
    }
}

impl Subjects {
    /// A directory on `db`.
    pub fn new(db: PgPool) -> Self {
        Self {
            db,
            known: Arc::new(RwLock::new(HashMap::new())),
            drivers: Arc::new(RwLock::new(DriverIds::default())),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Which of `ids` are drivers: from the set of known driver ids, fetching what it misses
    /// (see the module docs).
    pub async fn existing_drivers(&self, ids: &[i64]) -> Result<HashSet<i64>, sqlx::Error> {
        let missing = self.read_drivers().missing(ids);
        if !missing.is_empty() {
            let _fetching = self.fetching.lock().await;
            // Another request may have fetched them while this one waited.
            let (missing, after) = {
                let drivers = self.read_drivers();
                (drivers.missing(&missing), drivers.fetched_up_to)
            };
            if !missing.is_empty() {
                let found: Vec<i64> =
                    sqlx::query_scalar("SELECT id FROM drivers WHERE id > $1 OR id = ANY($2)")
                        .bind(after)
                        .bind(&missing)
                        .fetch_all(&self.db)
                        .await?;
                if let Ok(mut drivers) = self.drivers.write() {
                    let newest = found.iter().copied().filter(|id| *id > after).max();
                    drivers.fetched_up_to = newest.unwrap_or(after);
                    drivers.ids.extend(found);
                }
            }
        }
        let drivers = self.read_drivers();
        Ok(ids
            .iter()
            .copied()
            .filter(|id| drivers.ids.contains(id))
            .collect())
    }

    fn read_drivers(&self) -> std::sync::RwLockReadGuard<'_, DriverIds> {
        // A panic while holding the lock leaves a set that is still correct: use it.
        self.drivers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks `principal`: from memory when it was found within [`REMEMBER_FOR`] (drivers: ever),
    /// else with one query.
    pub async fn check(&self, principal: Principal) -> Result<SubjectCheck, sqlx::Error> {
        if principal.role == Role::Driver {
            // The set of driver ids is the memory.
            return self.look_up(principal).await;
        }
        let now = Instant::now();
        let remembered = self
            .known
            .read()
            .ok()
            .and_then(|known| known.get(&principal).copied())
            .is_some_and(|since| now.duration_since(since) < REMEMBER_FOR);
        if remembered {
            return Ok(SubjectCheck::Valid);
        }
        let check = self.look_up(principal).await?;
        if check == SubjectCheck::Valid
            && let Ok(mut known) = self.known.write()
        {
            if known.len() >= MAX_REMEMBERED {
                known.clear();
            }
            known.insert(principal, now);
        }
        Ok(check)
    }

    async fn look_up(&self, principal: Principal) -> Result<SubjectCheck, sqlx::Error> {
        let id = principal.subject;
        let found = |exists: bool| {
            if exists {
                SubjectCheck::Valid
            } else {
                SubjectCheck::Unknown
            }
        };
        Ok(match principal.role {
            Role::Customer | Role::Operator => {
                let role: Option<String> =
                    sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.db)
                        .await?;
                match role.map(|r| r.parse::<Role>()) {
                    None => SubjectCheck::Unknown,
                    Some(Ok(role)) if role == principal.role => SubjectCheck::Valid,
                    Some(Ok(role)) => SubjectCheck::OtherRole(role),
                    Some(Err(e)) => return Err(sqlx::Error::Decode(e.into())),
                }
            }
            Role::Driver => found(self.existing_drivers(&[id]).await?.contains(&id)),
            Role::Restaurant => found(
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM restaurants WHERE id = $1)")
                    .bind(id)
                    .fetch_one(&self.db)
                    .await?,
            ),
        })
    }
}
