//! The structured log sink (`[sink]`): every event appended to a file as one JSON object per
//! line (see [`event_to_json`]), for log aggregation.
//!
//! Position: with a durable backend (Redis, NATS) the cursor of the last written event is kept
//! in `<path>.cursor` (replaced atomically at most once a second, and at shutdown), and a
//! restarted role continues strictly after it, so events appended while it was down are written
//! too. Lines are written before the cursor that covers them, so a process crash writes the
//! batches of up to the last second again on restart: delivery is at least once, and consumers
//! of the file may deduplicate by `id`. Nothing is fsynced: after a crash of the machine itself
//! the file may lack lines the cursor covers. A batch is written whole or not at all: a write
//! that fails partway is cut off again, so a retry never leaves a broken line. With the memory
//! backend nothing survives the process, its cursors start again at 1, and no cursor file is
//! kept; the sink starts with the log, empty, at start-up. Rotate the file by copy and truncate
//! (it is opened in append mode).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nightshift_core::pb;
use nightshift_events_client::event_to_json;
use tokio::io::AsyncWriteExt;

use crate::config::SinkConfig;
use crate::consumer::{Consumer, ConsumerError};

/// The cursor file is replaced at most this often: a write and a rename per (usually
/// one-event) batch would cost more than the line itself, and at-least-once delivery only
/// repeats what the last interval wrote.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
#[error("sink.path {}: cannot open or read it", path.display())]
pub struct SinkError {
    /// The file (or its cursor file).
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// The JSON-lines file consumer.
pub(crate) struct JsonLinesSink {
    file: tokio::fs::File,
    /// `<path>.cursor`, when the position is kept.
    cursor_path: Option<PathBuf>,
    /// The cursor of the last written event, while it is not saved yet.
    unsaved: Option<String>,
    /// When the cursor file was last replaced.
    saved_at: Instant,
    buf: Vec<u8>,
}

impl JsonLinesSink {
    /// Opens (creates) the file for appending. With `keep_position` the position is kept in
    /// `<path>.cursor`; returns the cursor stored there, if any.
    pub(crate) async fn open(config: &SinkConfig, keep_position: bool) -> Result<(Self, Option<String>), SinkError> {
        let at = |path: &Path| {
            let path = path.to_owned();
            move |source| SinkError { path, source }
        };
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .await
            .map_err(at(&config.path))?;
        let cursor_path = keep_position.then(|| cursor_path(&config.path));
        let saved = match &cursor_path {
            None => None,
            Some(p) => match tokio::fs::read_to_string(p).await {
                Ok(text) => Some(text.trim().to_owned()).filter(|c| !c.is_empty()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(at(p)(e)),
            },
        };
        let sink = Self { file, cursor_path, unsaved: None, saved_at: Instant::now(), buf: Vec::new() };
        Ok((sink, saved))
    }

    /// Saves the cursor of the last written event, if it is not saved yet (at shutdown).
    pub(crate) async fn save_position(&mut self) -> std::io::Result<()> {
        let (Some(path), Some(cursor)) = (&self.cursor_path, &self.unsaved) else { return Ok(()) };
        // Write-then-rename, so a crash leaves the old or the new cursor, never a torn one.
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        tokio::fs::write(&tmp, cursor).await?;
        tokio::fs::rename(&tmp, path).await?;
        self.unsaved = None;
        self.saved_at = Instant::now();
        Ok(())
    }

    /// Appends `self.buf` whole: on a failure partway the file is cut back to its length
    /// before, so that the retry of the batch does not follow a torn line.
    async fn append_batch(&mut self) -> std::io::Result<()> {
        let len = self.file.metadata().await?.len();
        let written = async {
            self.file.write_all(&self.buf).await?;
            // Hands the bytes to the OS (tokio writes in the background) before the cursor
            // may move past them.
            self.file.flush().await
        }
        .await;
        if let Err(e) = written {
            // Only ever shorten: had the file been rotated (truncated) meanwhile, growing it back
            // to the old length would fill it with zeros.
            let cut = match self.file.metadata().await {
                Ok(m) if m.len() > len => self.file.set_len(len).await,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(cut) = cut {
                tracing::error!(error = %cut, "sink: cannot cut a partly written batch off the file");
            }
            return Err(e);
        }
        Ok(())
    }
}

/// `<path>.cursor`.
pub(crate) fn cursor_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".cursor");
    PathBuf::from(p)
}

#[async_trait::async_trait]
impl Consumer for JsonLinesSink {
    fn name(&self) -> &'static str {
        "sink"
    }

    async fn handle(&mut self, events: &[pb::Event]) -> Result<(), ConsumerError> {
        self.buf.clear();
        for e in events {
            serde_json::to_writer(&mut self.buf, &event_to_json(e))?;
            self.buf.push(b'\n');
        }
        self.append_batch().await?;
        if self.cursor_path.is_some()
            && let Some(last) = events.last()
        {
            self.unsaved = Some(last.cursor.clone());
            // A cursor that cannot be saved now is saved with a later batch: failing the batch
            // would only write its lines again.
            if self.saved_at.elapsed() >= SAVE_EVERY
                && let Err(e) = self.save_position().await
            {
                tracing::warn!(error = %e, "sink: cannot save its cursor; trying again with the next batch");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(cursor: &str) -> pb::Event {
        pb::Event { id: format!("e{cursor}"), cursor: cursor.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn the_cursor_is_saved_at_most_once_a_second_and_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let config = SinkConfig { path: dir.path().join("events.jsonl") };
        let (mut sink, saved) = JsonLinesSink::open(&config, true).await.unwrap();
        assert_eq!(saved, None);
        let cursor = || std::fs::read_to_string(cursor_path(&config.path)).ok();
        // The first batch a second after opening (as if the last save were that old).
        sink.saved_at = Instant::now().checked_sub(SAVE_EVERY).unwrap();
        sink.handle(&[ev("1")]).await.unwrap();
        assert_eq!(cursor().as_deref(), Some("1"));
        sink.handle(&[ev("2"), ev("3")]).await.unwrap();
        assert_eq!(cursor().as_deref(), Some("1"), "saved less than a second ago");
        sink.save_position().await.unwrap();
        assert_eq!(cursor().as_deref(), Some("3"));
        let text = std::fs::read_to_string(&config.path).unwrap();
        let ids: Vec<String> =
            text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string()).collect();
        assert_eq!(ids, ["\"e1\"", "\"e2\"", "\"e3\""]);
        let (_, saved) = JsonLinesSink::open(&config, true).await.unwrap();
        assert_eq!(saved.as_deref(), Some("3"), "a reopened sink continues after it");
    }
}
