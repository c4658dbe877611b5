//! Proto <-> domain conversions of the gRPC API (scopes, types, records), the metadata the
//! service writes into the vector index, and the [`MemoryError`] -> [`Status`] mapping.
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nightshift_core::{duration, pb, time};
use tonic::Status;

use crate::error::MemoryError;
use crate::service::{MAX_CONTENT_BYTES, Retention};
use crate::types::{MemoryRecord, MemoryType, Scope, is_shared_session, to_millis_precision};

/// Reserved prefix of the vector index's own metadata keys; user keys get `m.`.
const NS: &str = "ns.";

/// The gRPC status of a memory error; backend details are logged, not returned.
pub fn status_from_memory(e: MemoryError) -> Status {
    match e {
        MemoryError::Invalid(m) => Status::invalid_argument(m),
        MemoryError::Unavailable(m) => Status::failed_precondition(m),
        MemoryError::Config(m) => {
            tracing::error!(error = %m, "configuration error");
            Status::internal("memory service misconfigured; see its log")
        }
        MemoryError::Corrupt(m) => {
            tracing::error!(error = %m, "corrupt stored data");
            Status::internal("stored data is corrupt; see the memory service's log")
        }
        MemoryError::Backend { backend, message } => {
            tracing::error!(backend, error = %message, "memory backend error");
            Status::unavailable(format!("{backend} backend failed; see the memory service's log"))
        }
    }
}

pub(crate) fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

/// Validates a proto scope: session `agent`, `run:<id>` or `fixed:<id>`; an agent id is
/// required except for a shared `fixed:<id>` session, where it is ignored (see [`Scope`]).
pub(crate) fn scope_from_pb(field: &str, s: Option<&pb::MemoryScope>) -> Result<Scope, Status> {
    let s = s.ok_or_else(|| invalid(field, "is required"))?;
    let ok = match s.session.as_str() {
        "agent" => true,
        other => other
            .strip_prefix("run:")
            .or_else(|| other.strip_prefix("fixed:"))
            // 200: a `fixed:<namespace>/<id>` session holds a 63-byte namespace and a 128-byte id.
            .is_some_and(|id| !id.is_empty() && id.len() <= 200),
    };
    if !ok {
        return Err(invalid(
            &format!("{field}.session"),
            format!("'{}' is not one of agent, run:<run_id>, fixed:<id>", s.session),
        ));
    }
    if !is_shared_session(&s.session) {
        if s.agent_id.trim().is_empty() {
            return Err(invalid(&format!("{field}.agent_id"), "is required"));
        }
        if s.agent_id.len() > 256 {
            return Err(invalid(&format!("{field}.agent_id"), "is too long (max 256 bytes)"));
        }
    }
    Ok(Scope::new(s.agent_id.clone(), s.session.clone()))
}

pub(crate) fn type_from_pb(field: &str, t: i32, unspecified: Option<MemoryType>) -> Result<Option<MemoryType>, Status> {
    match pb::MemoryType::try_from(t) {
        Ok(pb::MemoryType::Unspecified) => Ok(unspecified),
        Ok(pb::MemoryType::Working) => Ok(Some(MemoryType::Working)),
        Ok(pb::MemoryType::Episodic) => Ok(Some(MemoryType::Episodic)),
        Ok(pb::MemoryType::LongTerm) => Ok(Some(MemoryType::LongTerm)),
        Ok(pb::MemoryType::Procedural) => Ok(Some(MemoryType::Procedural)),
        Err(_) => Err(invalid(field, format!("unknown memory type {t}"))),
    }
}

pub(crate) fn type_to_pb(t: MemoryType) -> pb::MemoryType {
    match t {
        MemoryType::Working => pb::MemoryType::Working,
        MemoryType::Episodic => pb::MemoryType::Episodic,
        MemoryType::LongTerm => pb::MemoryType::LongTerm,
        MemoryType::Procedural => pb::MemoryType::Procedural,
    }
}

/// What happens to the records a summary replaces (unspecified = keep).
pub(crate) fn retention_from_pb(field: &str, r: i32) -> Result<Retention, Status> {
    match pb::SummaryRetention::try_from(r) {
        Ok(pb::SummaryRetention::Unspecified | pb::SummaryRetention::Keep) => Ok(Retention::Keep),
        Ok(pb::SummaryRetention::Archive) => Ok(Retention::Archive),
        Ok(pb::SummaryRetention::Delete) => Ok(Retention::Delete),
        Err(_) => Err(invalid(field, format!("unknown retention {r}"))),
    }
}

/// The proto form of a record (`ttl` is what remains at `now`).
pub fn record_to_pb(r: &MemoryRecord, now: DateTime<Utc>) -> pb::MemoryRecord {
    pb::MemoryRecord {
        id: r.id.clone(),
        r#type: type_to_pb(r.kind) as i32,
        scope: Some(pb::MemoryScope { agent_id: r.scope.agent_id.clone(), session: r.scope.session.clone() }),
        content: r.content.clone(),
        metadata: r.metadata.clone(),
        run_id: r.run_id.clone(),
        created_at: Some(time::to_pb(r.created_at)),
        ttl: r.expires_at.map(|e| duration::to_pb((e - now).to_std().unwrap_or_default())),
        summary: r.summary,
    }
}

/// Validates `records[i]` of a Store request: an id is assigned when empty, `created_at`
/// defaults to `now`, and working memory without a TTL lives `working_ttl`.
pub(crate) fn record_from_pb(
    i: usize,
    r: &pb::MemoryRecord,
    now: DateTime<Utc>,
    working_ttl: Duration,
) -> Result<MemoryRecord, Status> {
    let f = |name: &str| format!("records[{i}].{name}");
    let kind = type_from_pb(&f("type"), r.r#type, None)?.ok_or_else(|| invalid(&f("type"), "is required"))?;
    let scope = scope_from_pb(&f("scope"), r.scope.as_ref())?;
    if r.content.trim().is_empty() {
        return Err(invalid(&f("content"), "is required"));
    }
    if r.content.len() > MAX_CONTENT_BYTES {
        return Err(invalid(
            &f("content"),
            format!("is too long ({} bytes, max {MAX_CONTENT_BYTES})", r.content.len()),
        ));
    }
    if r.id.len() > 128 {
        return Err(invalid(&f("id"), "is too long (max 128 bytes)"));
    }
    let created_at = match &r.created_at {
        Some(ts) => time::from_pb(ts).ok_or_else(|| invalid(&f("created_at"), "is not a valid timestamp"))?,
        None => now,
    };
    let ttl = match &r.ttl {
        Some(d) => {
            let d = duration::from_pb(d).map_err(|e| invalid(&f("ttl"), e))?;
            if d.is_zero() {
                return Err(invalid(&f("ttl"), "must be positive"));
            }
            Some(d)
        }
        None if kind == MemoryType::Working => Some(working_ttl),
        None => None,
    };
    let expires_at = ttl
        .map(|d| chrono::Duration::from_std(d).map(|d| now + d))
        .transpose()
        .map_err(|_| invalid(&f("ttl"), "is too long"))?;
    Ok(MemoryRecord {
        id: if r.id.is_empty() { uuid::Uuid::now_v7().to_string() } else { r.id.clone() },
        kind,
        scope,
        content: r.content.clone(),
        metadata: r.metadata.clone(),
        run_id: r.run_id.clone(),
        created_at: to_millis_precision(created_at),
        expires_at: expires_at.map(to_millis_precision),
        summary: r.summary,
        archived: false,
    })
}

/// The vector index metadata of a record: its scope and type under `ns.`, user keys under `m.`.
pub(crate) fn vector_metadata(r: &MemoryRecord) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = r.metadata.iter().map(|(k, v)| (format!("m.{k}"), v.clone())).collect();
    m.insert(format!("{NS}agent"), r.scope.agent_id.clone());
    m.insert(format!("{NS}session"), r.scope.session.clone());
    m.insert(format!("{NS}type"), r.kind.as_str().to_owned());
    m
}

/// The vector index filter of a Search: `scope` and `kind`, plus the user's metadata filter.
pub(crate) fn vector_filter(
    scope: &Scope,
    kind: MemoryType,
    metadata_filter: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut filter: BTreeMap<String, String> =
        metadata_filter.iter().map(|(k, v)| (format!("m.{k}"), v.clone())).collect();
    filter.insert(format!("{NS}agent"), scope.agent_id.clone());
    filter.insert(format!("{NS}session"), scope.session.clone());
    filter.insert(format!("{NS}type"), kind.as_str().to_owned());
    filter
}
