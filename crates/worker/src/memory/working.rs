//! Working memory: the scratch of one run across its attempts, in the run's own scope
//! (`run:<run id>`, whatever `memory.session` says: it is about this run only).
//!
//! A run's conversation already survives its attempts (the checkpoints a resumed attempt
//! continues from); what does not is how an attempt ended. So when an attempt ends and another
//! will follow — the manager scheduled a retry, a draining worker handed the run back, or its end
//! could not be recorded — the worker writes a note saying how it ended (failed with what error,
//! ran out of time, handed back, after how many LLM turns). The next attempt reads the notes into
//! its system prompt ("## This run so far"), naming attempts that left none (their worker died or
//! lost its lease), so the model knows it is resuming and why: to wrap up before a timeout, or to
//! avoid what failed. When the run ends for good the worker forgets its notes; the memory
//! service's `working_ttl` removes those of a worker that died first.
//!
//! Like all memory, this is context, not a dependency: failures are logged and counted
//! (`nightshift_worker_memory_errors_total{op}`), and the run goes on.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use nightshift_core::pb;
use nightshift_core::spec::run_session;

use super::{MEMORY_TIMEOUT, RunMemory, clip, failed};

/// Longest note quoted into the prompt.
const MAX_NOTE_CHARS: usize = 500;
/// Longest "This run so far" section.
const MAX_SECTION_CHARS: usize = 4_000;
/// Notes read per attempt (one per earlier attempt at most).
const MAX_NOTES: u32 = 100;

/// The working-memory scope of a run: the agent's `run:<run id>` session.
pub fn run_scope(agent_id: &str, run_id: &str) -> pb::MemoryScope {
    pb::MemoryScope { agent_id: agent_id.to_owned(), session: run_session(run_id) }
}

/// The id of an attempt's note: one per attempt, so a retried write replaces it.
pub fn note_id(run_id: &str, attempt: u32) -> String {
    format!("attempt-{run_id}-{attempt}")
}

/// Writes the note of how `run`'s current attempt ended (`outcome`: `failed`, `timed_out`,
/// `released`, `unrecorded`), for the attempt that follows.
#[tracing::instrument(name = "memory.note_attempt", skip_all)]
pub async fn note(client: &RunMemory, run: &pb::Run, outcome: &str, text: &str, turns: u32) {
    let record = pb::MemoryRecord {
        id: note_id(&run.id, run.attempt),
        r#type: pb::MemoryType::Working as i32,
        scope: Some(run_scope(&run.agent_id, &run.id)),
        content: text.to_owned(),
        metadata: BTreeMap::from([
            ("attempt".to_owned(), run.attempt.to_string()),
            ("outcome".to_owned(), outcome.to_owned()),
            ("steps".to_owned(), turns.to_string()),
        ]),
        run_id: run.id.clone(),
        // The service's working_ttl: the backstop should the run's end never be seen.
        ttl: None,
        ..Default::default()
    };
    match tokio::time::timeout(MEMORY_TIMEOUT, client.store(pb::StoreMemoryRequest { records: vec![record] })).await {
        Ok(Ok(_)) => {}
        Ok(Err(s)) => failed("note", &s),
        Err(_) => failed("note", &tonic::Status::deadline_exceeded("writing the attempt's note took too long")),
    }
}

/// The "This run so far" section of a resumed attempt's prompt ("" for a first attempt), and
/// whether the run may have notes to forget when it ends for good: some were read, or the
/// recall failed and cannot tell (false spares the run's end a Forget call).
#[tracing::instrument(name = "memory.recall_attempts", skip_all)]
pub async fn recall(client: &RunMemory, run: &pb::Run) -> (String, bool) {
    if run.attempt <= 1 {
        return (String::new(), false);
    }
    let req = pb::RecallRequest {
        scope: Some(run_scope(&run.agent_id, &run.id)),
        r#type: pb::MemoryType::Working as i32,
        limit: MAX_NOTES,
        before: None,
        metadata_filter: BTreeMap::new(),
    };
    let (notes, unknown) = match tokio::time::timeout(MEMORY_TIMEOUT, client.recall(req)).await {
        Ok(Ok(r)) => (r.into_inner().records, false),
        Ok(Err(s)) => {
            failed("recall", &s);
            (Vec::new(), true)
        }
        Err(_) => {
            failed("recall", &tonic::Status::deadline_exceeded("recalling the run's notes took too long"));
            (Vec::new(), true)
        }
    };
    (render(run.attempt, &notes), unknown || !notes.is_empty())
}

/// Forgets `run`'s working memory: the run has ended for good.
#[tracing::instrument(name = "memory.forget_run", skip_all)]
pub async fn forget(client: &RunMemory, run: &pb::Run) {
    let req = pb::ForgetRequest {
        scope: Some(run_scope(&run.agent_id, &run.id)),
        r#type: pb::MemoryType::Working as i32,
        ids: Vec::new(),
    };
    match tokio::time::timeout(MEMORY_TIMEOUT, client.forget(req)).await {
        Ok(Ok(_)) => {}
        Ok(Err(s)) => failed("forget", &s),
        Err(_) => failed("forget", &tonic::Status::deadline_exceeded("forgetting the run's notes took too long")),
    }
}

/// The section for `attempt`, from the notes of the earlier attempts (any order).
fn render(attempt: u32, notes: &[pb::MemoryRecord]) -> String {
    let by_attempt: BTreeMap<u32, &pb::MemoryRecord> = notes
        .iter()
        .filter_map(|r| Some((r.metadata.get("attempt")?.parse::<u32>().ok()?, r)))
        .filter(|(n, _)| *n < attempt)
        .collect();
    let mut s = format!("## This run so far\n\nThis is attempt {attempt} of this run. How the earlier attempts ended:");
    let silent: Vec<String> = (1..attempt).filter(|n| !by_attempt.contains_key(n)).map(|n| n.to_string()).collect();
    for r in by_attempt.values() {
        let _ = write!(s, "\n- {}", clip(&r.content, MAX_NOTE_CHARS).replace('\n', " "));
    }
    if !silent.is_empty() {
        let _ = write!(
            s,
            "\n- Attempt {} left no note (its worker stopped or lost its lease before it could write one).",
            silent.join(", ")
        );
    }
    clip(&s, MAX_SECTION_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(attempt: u32, content: &str) -> pb::MemoryRecord {
        pb::MemoryRecord {
            content: content.into(),
            metadata: [("attempt".to_owned(), attempt.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn earlier_attempts_in_order_and_the_silent_ones_named() {
        let s = render(
            4,
            &[note(3, "Attempt 3 ran out of time."), note(1, "Attempt 1 failed: boom."), note(4, "not earlier")],
        );
        assert_eq!(
            s,
            "## This run so far\n\nThis is attempt 4 of this run. How the earlier attempts ended:\n\
             - Attempt 1 failed: boom.\n- Attempt 3 ran out of time.\n\
             - Attempt 2 left no note (its worker stopped or lost its lease before it could write one)."
        );
    }

    #[test]
    fn the_scope_is_the_runs_own() {
        let s = run_scope("a1", "a1@1700000000000");
        assert_eq!((s.agent_id.as_str(), s.session.as_str()), ("a1", "run:a1@1700000000000"));
        assert_eq!(note_id("r1", 2), "attempt-r1-2");
    }
}
