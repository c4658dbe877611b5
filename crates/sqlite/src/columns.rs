//! A row's values by column name, whichever driver read it — sqlx's pool or the group writer's
//! own connection (rusqlite) — so that a store writes one decoder for both lanes.
use sqlx::Row;

use crate::direct::db_error;

/// A row's columns by name; a value of another type than asked, or a column the row lacks, is
/// an error (sqlx's, whichever driver).
pub trait Columns {
    /// An integer column (`None` for NULL).
    fn int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    /// A text column (`None` for NULL).
    fn text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
}

impl Columns for sqlx::any::AnyRow {
    fn int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(col)
    }

    fn text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(col)
    }
}

impl Columns for rusqlite::Row<'_> {
    fn int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        self.get(col).map_err(db_error)
    }

    fn text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        self.get(col).map_err(db_error)
    }
}
