//! [`SqlStore`](super::SqlStore)'s Postgres lane where it differs from SQLite's: a statement
//! is a round trip to another process, so a run's memory takes as few as its data allows — its
//! recall one statement for all its queries, a new record one statement with its metadata.
use sqlx::{AnyConnection, AnyPool, Row};

use super::{COLUMNS, METADATA_ROWS, bind_record, bind_values, corrupt, recent_text, recent_values, record_from_row};
use crate::error::MemoryError;
use crate::types::{MemoryRecord, RecallQuery};

/// The newest records of each query, in the queries' order, from one statement: each query a
/// branch of a `UNION ALL` tagged with its index (`q`), its placeholders after the previous
/// branch's. A run's episodes and procedural notes were two statements, each a pool connection
/// and a round trip of its own.
pub(super) async fn recent_together(
    pool: &AnyPool,
    queries: &[RecallQuery],
    now: i64,
) -> Result<Vec<Vec<MemoryRecord>>, MemoryError> {
    let mut branches = Vec::with_capacity(queries.len());
    let mut values = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        let text = recent_text(q.include_archived, q.before.is_some(), q.metadata.len(), values.len() + 1);
        branches.push(format!("SELECT CAST({i} AS BIGINT) AS q, t.* FROM ({text}) t"));
        values.extend(recent_values(q, now));
    }
    // Each branch keeps its own order and limit; the outer order says how they are returned
    // (`UNION ALL` alone promises no order).
    let sql =
        format!("SELECT q, {COLUMNS} FROM ({}) u ORDER BY q, created_at DESC, id DESC", branches.join(" UNION ALL "));
    let rows = bind_values(sqlx::query(sqlx::AssertSqlSafe(&*sql)), &values).fetch_all(pool).await?;
    let mut each = vec![Vec::new(); queries.len()];
    for row in &rows {
        let q: i64 = row.try_get("q")?;
        let found = usize::try_from(q)
            .ok()
            .and_then(|q| each.get_mut(q))
            .ok_or_else(|| corrupt("recall", format!("a row of query {q} of {}", queries.len())))?;
        found.push(record_from_row(row)?);
    }
    Ok(each)
}

/// Writes `records` (each with its metadata as JSON) on `conn`, inside a transaction the caller
/// ends.
pub(super) async fn put_records(
    conn: &mut AnyConnection,
    records: &[(MemoryRecord, String)],
) -> Result<(), MemoryError> {
    for (r, metadata) in records {
        let pairs: Vec<(&String, &String)> = r.metadata.iter().collect();
        let (first, rest) = pairs.split_at(pairs.len().min(METADATA_ROWS));
        if insert_new(conn, r, metadata, first).await? {
            insert_pairs(conn, &r.id, rest).await?;
            continue;
        }
        // A record that exists is updated and has its old metadata rows replaced.
        bind_record(
            sqlx::query(
                "UPDATE memory_records SET agent_id = $2, session = $3, kind = $4, content = $5, \
                 metadata = $6, run_id = $7, created_at = $8, expires_at = $9, summary = $10, archived = $11 \
                 WHERE id = $1",
            ),
            r,
            metadata,
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM memory_metadata WHERE record_id = $1").bind(r.id.as_str()).execute(&mut *conn).await?;
        insert_pairs(conn, &r.id, &pairs).await?;
    }
    Ok(())
}

/// A new record (every episode a run stores) with its first `pairs` of metadata in one
/// statement; false, with nothing written, when a record of its id exists.
async fn insert_new(
    conn: &mut AnyConnection,
    r: &MemoryRecord,
    metadata: &str,
    pairs: &[(&String, &String)],
) -> Result<bool, MemoryError> {
    let mut sql = String::from(
        "WITH r AS (INSERT INTO memory_records (id, agent_id, session, kind, content, metadata, run_id, \
         created_at, expires_at, summary, archived) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (id) DO NOTHING RETURNING id)",
    );
    if !pairs.is_empty() {
        // Only with the record: `r` is empty when it existed.
        let rows = (0..pairs.len()).map(|i| format!("(${}, ${})", 2 * i + 12, 2 * i + 13)).collect::<Vec<_>>();
        sql.push_str(&format!(
            ", m AS (INSERT INTO memory_metadata (record_id, key, value) \
             SELECT r.id, v.column1, v.column2 FROM r, (VALUES {}) AS v)",
            rows.join(", ")
        ));
    }
    sql.push_str(" SELECT COUNT(*) AS inserted FROM r");
    let mut query = bind_record(sqlx::query(sqlx::AssertSqlSafe(sql)), r, metadata);
    for (k, v) in pairs {
        query = query.bind(k.as_str()).bind(v.as_str());
    }
    let inserted: i64 = query.fetch_one(&mut *conn).await?.try_get("inserted")?;
    Ok(inserted > 0)
}

/// Inserts a record's metadata `pairs`, one statement for each [`METADATA_ROWS`] of them.
async fn insert_pairs(conn: &mut AnyConnection, id: &str, pairs: &[(&String, &String)]) -> Result<(), MemoryError> {
    for chunk in pairs.chunks(METADATA_ROWS) {
        let rows =
            (0..chunk.len()).map(|i| format!("($1, ${}, ${})", 2 * i + 2, 2 * i + 3)).collect::<Vec<_>>().join(", ");
        let sql = format!("INSERT INTO memory_metadata (record_id, key, value) VALUES {rows}");
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id);
        for (k, v) in chunk {
            insert = insert.bind(k.as_str()).bind(v.as_str());
        }
        insert.execute(&mut *conn).await?;
    }
    Ok(())
}
