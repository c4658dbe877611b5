//! SQLite as the embedded database of `nightshift dev`: the group writer through which the run
//! store and the memory service commit many callers' writes in one transaction (one write lock
//! per file; see [`GroupWriter`]; its usual writes run on its own thread, [`Direct`]; its file's
//! checkpoints on another), and how their connections on such a file are set up ([`configure`],
//! [`open`]); a row's columns whichever driver read it ([`Columns`]). [`Writer`] is what those
//! stores hold whatever their database: this group writer, or Postgres' committers.
mod checkpoint;
mod columns;
mod direct;
mod group_writer;
mod pool;
mod writer;

pub use columns::Columns;
pub use direct::{Direct, Read, bind_numbered, db_error};
pub use group_writer::GroupWriter;
pub use nightshift_group_commit::{Committers, ConnFuture, GroupCommitStats, Write};
pub use pool::{configure, open};
pub use writer::Writer;
