//! The structured log sink: every event as one JSON line (see [`event_to_json`]), for log
//! aggregation.
use std::io::Write;
use std::ops::ControlFlow;

use nightshift_core::pb::event_service_client::EventServiceClient;
use nightshift_events_client::{TailOptions, event_to_json, tail};
use tonic::transport::Channel;

/// Why the sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The event service failed.
    #[error("event service: {0}")]
    Rpc(#[from] tonic::Status),
    /// Writing a line failed.
    #[error("writing: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes every event selected by `options` to `out`, one JSON object per line, flushed per
/// line. With `follow` it runs until the server ends the stream (a `Lagged` signal is resumed
/// transparently). Returns the cursor of the last event written: persist it and start the
/// next run with `TailFrom::After(cursor)` to continue without a gap or a duplicate.
pub async fn run_json_lines_sink<W: Write + Send>(
    client: &mut EventServiceClient<Channel>,
    options: TailOptions,
    out: &mut W,
) -> Result<Option<String>, SinkError> {
    let mut failed: Option<std::io::Error> = None;
    let mut written: Option<String> = None;
    tail(client, options, |e| {
        let line = event_to_json(e).to_string();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => {
                written = Some(e.cursor.clone());
                ControlFlow::Continue(())
            }
            Err(err) => {
                failed = Some(err);
                ControlFlow::Break(())
            }
        }
    })
    .await?;
    match failed {
        Some(e) => Err(SinkError::Io(e)),
        None => Ok(written),
    }
}
