//! Whether a token's subject exists, in the role the token claims.
//!
//! A signed token proves who minted it, not that its subject is still (or ever was) what it
//! says: a customer token naming a user that does not exist would reach the order insert (a
//! foreign-key violation), and one naming a driver's user account would place orders as a
//! customer. So every request's principal is looked up: customers and operators in `users`
//! (with their role), drivers in `drivers`, restaurants in `restaurants`.
//!
//! Found subjects are remembered in process for [`REMEMBER_FOR`]: nothing in courier deletes a
//! user, driver or restaurant or changes a user's role, so the hot path (10K location reports a
//! second) costs a map lookup, not a query. Unknown subjects are not remembered, so one created a
//! moment later is accepted at once.

use std::collections::HashMap;
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
}

impl Subjects {
    /// A directory on `db`.
    pub fn new(db: PgPool) -> Self {
        Self {
            db,
            known: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// Checks `principal`: from memory when it was found within [`REMEMBER_FOR`], else with one
    /// query.
    pub async fn check(&self, principal: Principal) -> Result<SubjectCheck, sqlx::Error> {
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
            Role::Driver => found(
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM drivers WHERE id = $1)")
                    .bind(id)
                    .fetch_one(&self.db)
                    .await?,
            ),
            Role::Restaurant => found(
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM restaurants WHERE id = $1)")
                    .bind(id)
                    .fetch_one(&self.db)
                    .await?,
            ),
        })
    }
}
