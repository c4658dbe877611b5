//! `nightshift runs watch RUN_ID`: a run's steps as they are checkpointed, one line each, and its
//! state changes, until it ends. A dropped stream is resumed from the last cursor (no step
//! shown twice or missed); on a terminal a spinner turns while the run works between steps.
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use nightshift_core::pb;
use pb::run_step::Payload;
use pb::watch_run_response::Item;
use tonic::Code;

use crate::Server;
use crate::args::Output;

/// Reconnections tried in a row before giving up.
const RECONNECTS: u32 = 10;
/// Longest text of a step on its line.
const MAX_TEXT: usize = 200;

fn clip(text: &str) -> String {
    let one_line = text.replace('\n', " ⏎ ");
    match one_line.char_indices().nth(MAX_TEXT) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

fn millis(d: Option<&prost_types::Duration>) -> String {
    d.map(nightshift_core::duration::format_pb).unwrap_or_else(|| "—".into())
}

/// The lines one item prints (a delta prints its text as it comes instead).
pub(crate) fn lines(item: &Item) -> Vec<String> {
    match item {
        Item::Delta(d) => vec![format!("[{}/{}] llm … {}", d.attempt, d.seq, d.text)],
        Item::Run(r) => {
            let mut line = format!("run {} {} (attempt {})", r.id, crate::output::status_name(r.status), r.attempt);
            for (label, text) in [("answer", &r.result), ("error", &r.error), ("reason", &r.reason)] {
                if !text.is_empty() {
                    line.push_str(&format!(" · {label}: {}", clip(text)));
                }
            }
            vec![line]
        }
        Item::Step(s) => {
            let at = format!("[{}/{}]", s.attempt, s.seq);
            match &s.payload {
                Some(Payload::LlmResponse(l)) => {
                    let mut out = Vec::new();
                    if let Some(r) = l.prompt.as_ref().and_then(|p| p.recall.as_ref()) {
                        out.push(format!(
                            "{at} memory recalled: {} episodes, {} facts, {} notes ({})",
                            r.episodes,
                            r.facts,
                            r.notes,
                            millis(r.latency.as_ref())
                        ));
                    }
                    let u = l.usage.unwrap_or_default();
                    let what = if l.tool_calls.is_empty() {
                        format!("answer: {}", clip(&l.content))
                    } else {
                        let calls: Vec<String> =
                            l.tool_calls.iter().map(|c| format!("{} {}", c.name, clip(&c.arguments_json))).collect();
                        format!("calls {}", calls.join(", "))
                    };
                    out.push(format!(
                        "{at} llm {} · in {} · out {} · {} → {what}",
                        l.model,
                        u.input_tokens,
                        u.output_tokens,
                        millis(l.latency.as_ref())
                    ));
                    out
                }
                Some(Payload::ToolStarted(t)) => {
                    vec![format!("{at} started {} {} (irreversible)", t.tool_name, clip(&t.arguments_json))]
                }
                Some(Payload::ToolResult(t)) => vec![format!(
                    "{at} tool {} · {} · {}: {}",
                    t.tool_name,
                    millis(t.duration.as_ref()),
                    if t.is_error { "error" } else { "ok" },
                    clip(&t.output)
                )],
                Some(Payload::MemoryStored(m)) if m.error.is_empty() => {
                    vec![format!("{at} memory stored {} ({})", m.record_id, millis(m.latency.as_ref()))]
                }
                Some(Payload::MemoryStored(m)) => vec![format!("{at} memory not stored: {}", clip(&m.error))],
                None => vec![format!("{at} (a step this CLI does not know)")],
            }
        }
    }
}

/// Follows `run_id` from `cursor` to its end.
pub(crate) async fn watch(server: &Server, out: Output, run_id: String, mut cursor: String) -> anyhow::Result<()> {
    let spinner = out == Output::Table && std::io::stdout().is_terminal();
    let mut failures = 0;
    let mut ended = false;
    while !ended {
        let mut client = server.manager().await?;
        let opened = client.watch_run(pb::WatchRunRequest { run_id: run_id.clone(), cursor: cursor.clone() }).await;
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(s) if matches!(s.code(), Code::Unavailable | Code::Unknown) && failures < RECONNECTS => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures))).await;
                continue;
            }
            Err(s) => return Err(s).context("WatchRun"),
        };
        let mut tick = tokio::time::interval(Duration::from_millis(120));
        let mut frame = 0usize;
        // The step whose text is being printed as it comes, and the next step not yet shown.
        let mut streaming: Option<u32> = None;
        let mut next_seq = 0u32;
        loop {
            let next = tokio::select! {
                m = stream.message() => m,
                _ = tick.tick(), if spinner && streaming.is_none() => {
                    frame += 1;
                    print!("\r{} working…", ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'][frame % 10]);
                    let _ = std::io::stdout().flush();
                    continue;
                }
            };
            match next {
                Ok(Some(resp)) => {
                    failures = 0;
                    if !resp.cursor.is_empty() {
                        cursor = resp.cursor.clone();
                    }
                    let Some(item) = resp.item else { continue };
                    if let Item::Delta(d) = &item {
                        // Text of a step already shown (the relay can lag the store) is dropped.
                        if d.seq < next_seq {
                            continue;
                        }
                        if out == Output::Table {
                            if streaming != Some(d.seq) {
                                print!("{}[{}/{}] llm … ", if spinner { "\r\x1b[2K" } else { "" }, d.attempt, d.seq);
                                streaming = Some(d.seq);
                            }
                            print!("{}", d.text);
                            let _ = std::io::stdout().flush();
                            continue;
                        }
                    }
                    if let Item::Step(s) = &item {
                        next_seq = s.seq + 1;
                    }
                    if out == Output::Table && streaming.take().is_some() {
                        println!();
                    }
                    ended = matches!(&item, Item::Run(r) if nightshift_core::RunStatus::from_pb(r.status()).is_some_and(|s| s.is_terminal()));
                    match out {
                        Output::Table => {
                            if spinner {
                                print!("\r\x1b[2K");
                            }
                            for line in lines(&item) {
                                println!("{line}");
                            }
                        }
                        Output::Json => println!("{}", serde_json::to_string(&item_json(&resp.cursor, &item))?),
                        Output::Yaml => print!("---\n{}", serde_norway::to_string(&item_json(&resp.cursor, &item))?),
                    }
                }
                // The server ends the stream after the run's end; any other end is resumed.
                Ok(None) if ended || failures < RECONNECTS => {
                    failures += u32::from(!ended);
                    break;
                }
                Ok(None) => anyhow::bail!("the watch stream kept ending before the run did"),
                Err(s)
                    if matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Internal)
                        && failures < RECONNECTS =>
                {
                    failures += 1;
                    tracing::debug!(error = %s, "the watch stream dropped; resuming from the last cursor");
                    break;
                }
                Err(s) => return Err(s).context("WatchRun"),
            }
        }
        if !ended {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// One item as JSON: its cursor, and its lines in words (`-o json` / `-o yaml`).
fn item_json(cursor: &str, item: &Item) -> serde_json::Value {
    let kind = match item {
        Item::Run(_) => "run",
        Item::Step(_) => "step",
        Item::Delta(_) => "delta",
    };
    serde_json::json!({"cursor": cursor, "kind": kind, "lines": lines(item)})
}
