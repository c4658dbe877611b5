//! API keys: created with a random secret that is returned once, stored as a SHA-256 hash,
//! verified by id + hash, revoked by setting `revoked_at`.
//!
//! A key reads `nsk_<id>_<secret>`: the id (12 hex digits) finds the row and names the key in
//! lists and audit; the secret (64 hex digits, 256 bits from the OS) is never stored.
use nightshift_core::auth::{Principal, Role, constant_time_eq, secret_hash};
use nightshift_core::{Namespaces, time};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::{Store, time_col};
use crate::error::StoreError;

/// The prefix of every Nightshift API key.
pub const KEY_PREFIX: &str = "nsk_";

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Where it may do it.
    pub namespaces: Namespaces,
    /// When it was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it stops working (`None` = never).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who created it.
    pub created_by: String,
}

/// Why a presented key is not accepted. Deliberately without detail for the caller: the
/// server answers UNAUTHENTICATED whatever the reason, and logs the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefused {
    /// Not of the `nsk_<id>_<secret>` form.
    #[error("not a Nightshift API key")]
    Malformed,
    /// No key with that id, or the secret does not match.
    #[error("unknown key")]
    Unknown,
    /// Revoked.
    #[error("revoked key")]
    Revoked,
    /// Past its expiry.
    #[error("expired key")]
    Expired,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `nsk_<id>_<secret>` into id and secret.
pub fn parse_key(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 12) && hex_of(secret, 64)).then_some((id, secret))
}

/// Checks a presented key against its stored record (pure: the store looks the record up).
pub fn check_key(
    record: Option<(&ApiKeyRecord, &str)>,
    secret: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Principal, KeyRefused> {
    let Some((record, stored_hash)) = record else { return Err(KeyRefused::Unknown) };
    if !constant_time_eq(secret_hash(secret).as_bytes(), stored_hash.as_bytes()) {
        return Err(KeyRefused::Unknown);
    }
    if record.revoked_at.is_some() {
        return Err(KeyRefused::Revoked);
    }
    if record.expires_at.is_some_and(|at| at <= now) {
        return Err(KeyRefused::Expired);
    }
    Ok(Principal {
        name: format!("key:{}:{}", record.id, record.name),
        role: record.role,
        namespaces: record.namespaces.clone(),
    })
}

const COLUMNS: &str = "id, name, role, namespaces, secret_hash, created_at, expires_at, revoked_at, created_by";

/// The column form of a key's namespaces: `*` or the names joined with ','.
fn namespaces_column(n: &Namespaces) -> String {
    n.to_strings().join(",")
}

fn namespaces_from_column(s: &str) -> Result<Namespaces, StoreError> {
    let items: Vec<&str> = if s.is_empty() { Vec::new() } else { s.split(',').collect() };
    if items.is_empty() {
        return Ok(Namespaces::none());
    }
    Namespaces::parse("api_keys.namespaces", &items).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_row(row: &AnyRow) -> Result<(ApiKeyRecord, String), StoreError> {
    let role: String = row.try_get("role")?;
    let record = ApiKeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: role.parse().map_err(StoreError::Corrupt)?,
        namespaces: namespaces_from_column(&row.try_get::<String, _>("namespaces")?)?,
        created_at: time_col(row, "created_at")?.unwrap_or_default(),
        expires_at: time_col(row, "expires_at")?,
        revoked_at: time_col(row, "revoked_at")?,
        created_by: row.try_get("created_by")?,
    };
    Ok((record, row.try_get("secret_hash")?))
}

impl Store {
    /// Creates a key; returns its record and the whole key, which is not kept.
    pub async fn create_api_key(
        &self,
        name: &str,
        role: Role,
        namespaces: &Namespaces,
        ttl: Option<std::time::Duration>,
        created_by: &str,
    ) -> Result<(ApiKeyRecord, String), StoreError> {
        let valid = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(StoreError::Invalid("key name: 1-64 characters of letters, digits, '-', '_' or '.'".into()));
        }
        let id = hex(&rand::random::<[u8; 6]>());
        let secret = hex(&rand::random::<[u8; 32]>());
        let now = self.now_ms();
        let expires = ttl.map(|ttl| now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
        sqlx::query(
            "INSERT INTO api_keys (id, name, role, secret_hash, created_at, expires_at, created_by, namespaces) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(name)
        .bind(role.as_str())
        .bind(secret_hash(&secret))
        .bind(now)
        .bind(expires)
        .bind(created_by)
        .bind(namespaces_column(namespaces))
        .execute(&self.pool)
        .await?;
        let record = ApiKeyRecord {
            id: id.clone(),
            name: name.to_owned(),
            role,
            namespaces: namespaces.clone(),
            created_at: time::from_millis(now),
            expires_at: expires.map(time::from_millis),
            revoked_at: None,
            created_by: created_by.to_owned(),
        };
        Ok((record, format!("{KEY_PREFIX}{id}_{secret}")))
    }

    /// Every key, newest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM api_keys ORDER BY created_at DESC, id")))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| from_row(r).map(|(record, _)| record)).collect()
    }

    /// Revokes a key (idempotent: a revoked key keeps its first revocation time).
    pub async fn revoke_api_key(&self, id: &str) -> Result<ApiKeyRecord, StoreError> {
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(self.now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.api_key(id).await?.map(|(r, _)| r).ok_or_else(|| StoreError::NotFound(format!("API key '{id}'")))
    }

    async fn api_key(&self, id: &str) -> Result<Option<(ApiKeyRecord, String)>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Who a presented key is; `Ok(Err(_))` when it is refused.
    pub async fn verify_api_key(&self, key: &str) -> Result<Result<Principal, KeyRefused>, StoreError> {
        let Some((id, secret)) = parse_key(key) else { return Ok(Err(KeyRefused::Malformed)) };
        let found = self.api_key(id).await?;
        Ok(check_key(found.as_ref().map(|(r, h)| (r, h.as_str())), secret, self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_only_in_their_exact_form() {
        let key = format!("nsk_{}_{}", "a".repeat(12), "b".repeat(64));
        assert_eq!(parse_key(&key), Some(("aaaaaaaaaaaa", "b".repeat(64).as_str())));
        assert_eq!(parse_key("nsk_short_b"), None);
        assert_eq!(parse_key(&key.replace("nsk_", "xyz_")), None);
        assert_eq!(parse_key(&format!("{key}0")), None);
    }

    #[test]
    fn namespaces_round_trip_through_their_column() {
        for n in [Namespaces::All, Namespaces::default_only(), Namespaces::parse("n", &["a", "b"]).unwrap()] {
            assert_eq!(namespaces_from_column(&namespaces_column(&n)).unwrap(), n);
        }
        assert_eq!(namespaces_from_column("").unwrap(), Namespaces::none());
    }

    #[test]
    fn check_refuses_wrong_secrets_revoked_and_expired_keys() {
        let now = chrono::Utc::now();
        let record = ApiKeyRecord {
            id: "0123456789ab".into(),
            name: "ci".into(),
            role: Role::Operator,
            namespaces: Namespaces::default_only(),
            created_at: now,
            expires_at: Some(now + chrono::Duration::seconds(60)),
            revoked_at: None,
            created_by: "admin".into(),
        };
        let hash = secret_hash("s3cret");
        let p = check_key(Some((&record, &hash)), "s3cret", now).unwrap();
        assert_eq!((p.role, p.namespaces), (Role::Operator, Namespaces::default_only()));
        assert_eq!(check_key(Some((&record, &hash)), "guess", now), Err(KeyRefused::Unknown));
        assert_eq!(check_key(None, "s3cret", now), Err(KeyRefused::Unknown));
        let later = now + chrono::Duration::seconds(61);
        assert_eq!(check_key(Some((&record, &hash)), "s3cret", later), Err(KeyRefused::Expired));
        let revoked = ApiKeyRecord { revoked_at: Some(now), ..record };
        assert_eq!(check_key(Some((&revoked, &hash)), "s3cret", now), Err(KeyRefused::Revoked));
    }
}
