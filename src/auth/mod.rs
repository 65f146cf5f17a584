//! Bearer tokens, roles and the authenticated principal.
//!
//! Tokens are HS256-signed JWTs carrying a role and a subject. The subject is the id of the
//! entity the role acts as: a user id for customers and operators, a driver id for drivers, a
//! restaurant id for restaurants. Every `/v1` route sits behind [`require_auth`], which verifies
//! the token, checks that its subject exists in that role ([`subjects`]) and puts the
//! [`Principal`] in the request; handlers take it as an extractor and check the role they need
//! with [`Principal::require_role`].

pub mod subjects;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};

pub use crate::domain::Role;

use crate::auth::subjects::{SubjectCheck, Subjects};
use crate::domain::{Actor, DriverId, RestaurantId, UserId};
use crate::error::ApiError;

/// The shortest signing secret accepted: HS256 keys shorter than the hash output are weak.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The token signing secret: zeroed when dropped, and its `Debug` never prints it.
#[derive(Clone)]
pub struct JwtSecret(SecretSlice<u8>);

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(..)")
    }
}

/// A signing secret shorter than [`MIN_JWT_SECRET_BYTES`]; it holds the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signing secret is {0} bytes; at least {MIN_JWT_SECRET_BYTES} are required")]
pub struct SecretTooShort(pub usize);

impl JwtSecret {
    /// A secret from raw bytes, at least [`MIN_JWT_SECRET_BYTES`] long.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, SecretTooShort> {
        if bytes.len() < MIN_JWT_SECRET_BYTES {
            return Err(SecretTooShort(bytes.len()));
        }
        Ok(Self(bytes.into()))
    }

    /// The secret's bytes, for building signing keys.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

/// The `iss` claim of every token courier issues and accepts.
pub const ISSUER: &str = "courier";

/// Longest lifetime a minted token may have.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Clock skew tolerated when checking expiry, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 30;

/// The authenticated caller of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Principal {
    pub role: Role,
    /// Id of the user, driver or restaurant the role acts as.
    pub subject: i64,
}

impl Principal {
    /// Who the principal is to an order's workflow.
    pub fn actor(self) -> Actor {
        match self.role {
            Role::Customer => Actor::Customer(UserId(self.subject)),
            Role::Restaurant => Actor::Restaurant(RestaurantId(self.subject)),
            Role::Driver => Actor::Driver(DriverId(self.subject)),
            Role::Operator => Actor::Operator(UserId(self.subject)),
        }
    }

    /// Succeeds when the principal holds one of `roles`; otherwise a 403.
    pub fn require_role(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "this action requires the {} role",
                allowed.join(" or ")
            )))
        }
    }
}

/// The claims inside a token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    iss: String,
    iat: i64,
    exp: i64,
    /// Not valid before (unix seconds); courier does not set it, but honours it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is invalid")]
    Invalid,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("subject must be a positive id, got {0}")]
    Subject(i64),
    #[error("token lifetime must be between 1 second and 90 days")]
    Ttl,
    #[error("could not sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Signs and verifies tokens with one secret. Cheap to clone (every request's extractor
/// does): the keys are shared.
#[derive(Clone)]
pub struct TokenKeys(Arc<Keys>);

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    /// Keys for the given secret.
    pub fn new(secret: &JwtSecret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        Self(Arc::new(Keys {
            encoding: EncodingKey::from_secret(secret.expose()),
            decoding: DecodingKey::from_secret(secret.expose()),
            validation,
        }))
    }

    /// Mints a token for `principal`, issued at `issued_at` (unix seconds), valid for `ttl`.
    pub fn issue(
        &self,
        principal: Principal,
        issued_at: i64,
        ttl: Duration,
    ) -> Result<String, IssueError> {
        if principal.subject <= 0 {
            return Err(IssueError::Subject(principal.subject));
        }
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(IssueError::Ttl);
        }
        let ttl_secs = i64::try_from(ttl.as_secs()).map_err(|_| IssueError::Ttl)?;
        let claims = Claims {
            sub: principal.subject.to_string(),
            role: principal.role,
            iss: ISSUER.to_owned(),
            iat: issued_at,
            exp: issued_at + ttl_secs,
            nbf: None,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.0.encoding,
        )?)
    }

    /// Verifies a token's signature, issuer, expiry, `nbf` and `iat` (neither may lie ahead),
    /// and returns its principal.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.0.decoding, &self.0.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                _ => TokenError::Invalid,
            })?;
        // A token issued in the future was minted on a wrong clock, or forged to outlive its
        // real lifetime: refused, as `nbf` ahead is.
        let leeway = i64::try_from(LEEWAY_SECS).unwrap_or(0);
        if data.claims.iat > chrono::Utc::now().timestamp() + leeway {
            return Err(TokenError::NotYetValid);
        }
        let subject = data
            .claims
            .sub
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or(TokenError::Invalid)?;
        Ok(Principal {
            role: data.claims.role,
            subject,
        })
    }
}

/// What [`require_auth`] needs: the keys to verify tokens, and the subjects they may name.
#[derive(Clone, Debug)]
pub struct Authenticator {
    pub keys: TokenKeys,
    pub subjects: Subjects,
}

/// Middleware for every `/v1` route: a valid bearer token whose subject exists in its role, or
/// a 401 (403 when the subject exists in another role).
pub async fn require_auth(
    State(auth): State<Authenticator>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request.headers().get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_token",
            "an Authorization: Bearer token is required",
        )
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "invalid_token",
                "the Authorization header must be `Bearer <token>`",
            )
        })?;
    let principal = auth.keys.verify(token).map_err(|e| match e {
        TokenError::Expired => ApiError::unauthorized("token_expired", "the token has expired"),
        TokenError::NotYetValid => {
            ApiError::unauthorized("token_not_yet_valid", "the token is not valid yet")
        }
        TokenError::Invalid => ApiError::unauthorized("invalid_token", "the token is invalid"),
    })?;
    match auth.subjects.check(principal).await? {
        SubjectCheck::Valid => {}
        SubjectCheck::Unknown => {
            return Err(ApiError::unauthorized(
                "unknown_subject",
                format!(
                    "the token's subject, {} {}, does not exist",
                    principal.role, principal.subject
                ),
            ));
        }
        SubjectCheck::OtherRole(actual) => {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "subject_role_mismatch",
                format!(
                    "the token says {} but user {} is a {actual}",
                    principal.role, principal.subject
                ),
            ));
        }
    }
    tracing::Span::current().record(
        "principal",
        tracing::field::display(format_args!("{}:{}", principal.role, principal.subject)),
    );
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().copied().ok_or_else(|| {
            ApiError::unauthorized(
                "missing_token",
                "an Authorization: Bearer token is required",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&JwtSecret::from_bytes(secret.as_bytes().to_vec()).expect("valid secret"))
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    const SECRET: &str = "unit-test-secret-unit-test-secret-0123";

    #[test]
    fn a_token_round_trips() {
        let keys = keys(SECRET);
        let principal = Principal {
            role: Role::Driver,
            subject: 42,
        };
        let token = keys
            .issue(principal, now(), Duration::from_secs(60))
            .expect("issued");
        assert_eq!(keys.verify(&token), Ok(principal));
    }

    #[test]
    fn another_secret_is_refused() {
        let principal = Principal {
            role: Role::Operator,
            subject: 1,
        };
        let token = keys(SECRET)
            .issue(principal, now(), Duration::from_secs(60))
            .expect("issued");
        let other = keys("another-secret-another-secret-another-1");
        assert_eq!(other.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn an_expired_token_is_refused_past_the_leeway() {
        let keys = keys(SECRET);
        let principal = Principal {
            role: Role::Customer,
            subject: 7,
        };
        let issued = now() - 3600;
        let token = keys
            .issue(principal, issued, Duration::from_secs(60))
            .expect("issued");
        assert_eq!(keys.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn garbage_is_invalid() {
        assert_eq!(keys(SECRET).verify("not.a.token"), Err(TokenError::Invalid));
    }

    #[test]
    fn minting_rejects_bad_subjects_and_lifetimes() {
        let keys = keys(SECRET);
        let bad_subject = Principal {
            role: Role::Customer,
            subject: 0,
        };
        assert!(matches!(
            keys.issue(bad_subject, now(), Duration::from_secs(60)),
            Err(IssueError::Subject(0))
        ));
        let ok = Principal {
            role: Role::Customer,
            subject: 1,
        };
        assert!(matches!(
            keys.issue(ok, now(), Duration::ZERO),
            Err(IssueError::Ttl)
        ));
        assert!(matches!(
            keys.issue(ok, now(), MAX_TOKEN_TTL + Duration::from_secs(1)),
            Err(IssueError::Ttl)
        ));
    }

    #[test]
    fn roles_are_enforced() {
        let driver = Principal {
            role: Role::Driver,
            subject: 3,
        };
        assert!(driver.require_role(&[Role::Driver, Role::Operator]).is_ok());
        let err = driver
            .require_role(&[Role::Operator])
            .expect_err("forbidden");
        assert_eq!(err.code(), "forbidden");
    }

    #[test]
    fn roles_parse_from_their_names() {
        for role in [
            Role::Customer,
            Role::Restaurant,
            Role::Driver,
            Role::Operator,
        ] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("admin".parse::<Role>().is_err());
    }
}
