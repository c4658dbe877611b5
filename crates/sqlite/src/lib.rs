//! SQLite as the embedded database of `nightshift dev`: the group writer through which the run
//! store and the memory service commit many callers' writes in one transaction (one write lock
//! per file; see [`GroupWriter`]), and how their pools on such a file are set up ([`configure`]).
mod group_writer;
mod pool;

pub use group_writer::{ConnFuture, GroupCommitStats, GroupWriter, Write, transaction};
pub use pool::configure;
