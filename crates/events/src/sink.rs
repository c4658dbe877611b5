//! The structured log sink (`[sink]`): every event appended to a file as one JSON object per
//! line (see [`event_to_json`]), for log aggregation.
//!
//! Position: with a durable backend (Redis, NATS) the cursor of the last written event is kept
//! in `<path>.cursor` (replaced atomically after every written batch), and a restarted role
//! continues strictly after it, so events appended while it was down are written too. The line
//! is written before the cursor, so a crash between the two writes that batch again on restart:
//! delivery is at least once, and consumers of the file may deduplicate by `id`. With the memory
//! backend nothing survives the process, its cursors start again at 1, and no cursor file is
//! kept; the sink starts with the log, empty, at start-up. Rotate the file by copy and truncate
//! (it is opened in append mode).
use std::path::{Path, PathBuf};

use nightshift_core::pb;
use nightshift_events_client::event_to_json;
use tokio::io::AsyncWriteExt;

use crate::config::SinkConfig;
use crate::consumer::{Consumer, ConsumerError};

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
        Ok((Self { file, cursor_path, buf: Vec::new() }, saved))
    }

    async fn save_cursor(&self, cursor: &str) -> std::io::Result<()> {
        let Some(path) = &self.cursor_path else { return Ok(()) };
        // Write-then-rename, so a crash leaves the old or the new cursor, never a torn one.
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        tokio::fs::write(&tmp, cursor).await?;
        tokio::fs::rename(&tmp, path).await
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
        // One write per batch; flush hands it to the OS before the cursor moves past it.
        self.file.write_all(&self.buf).await?;
        self.file.flush().await?;
        if let Some(last) = events.last() {
            self.save_cursor(&last.cursor).await?;
        }
        Ok(())
    }
}
