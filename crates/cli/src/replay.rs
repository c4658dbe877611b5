//! `nightshift runs replay` and `nightshift runs diff`: re-run a past run (its first steps
//! reused, tools frozen by default), and compare two runs side by side.
use nightshift_core::pb;
use pb::run_step::Payload;
use serde::Serialize;

use crate::Server;
use crate::args::Output;
use crate::output::{self, RunView, new_table};

/// What `runs replay` asks for.
pub(crate) struct ReplayArgs {
    pub id: String,
    pub from_step: u32,
    pub agent_version: u64,
    pub model: String,
    pub tools: String,
    pub live_reads: bool,
    pub store_memory: bool,
    pub watch: bool,
}

/// `runs replay`: queues the replay, prints it, and follows it with `--watch`.
pub(crate) async fn replay(server: &Server, out: Output, a: ReplayArgs) -> anyhow::Result<()> {
    let tools = match a.tools.as_str() {
        "frozen" => pb::ReplayTools::Frozen,
        "live" => pb::ReplayTools::Live,
        other => anyhow::bail!("--tools: '{other}' is not frozen or live"),
    };
    let req = pb::ReplayRunRequest {
        run_id: a.id,
        from_step: a.from_step,
        agent_version: a.agent_version,
        model: a.model,
        tools: tools as i32,
        live_reads: a.live_reads,
        store_memory: a.store_memory,
    };
    let run = server.manager().await?.replay_run(req).await?.into_inner().run.unwrap_or_default();
    if a.watch {
        if out == Output::Table {
            println!("replay {} of {}", run.id, run.replay_of);
        }
        return crate::watch::watch(server, out, run.id, String::new()).await;
    }
    output::print(out, &RunView::from_pb(&run), |r| output::runs_table(std::slice::from_ref(r)))
}

/// One run's side of a diff.
#[derive(Serialize)]
struct Side {
    run: String,
    status: String,
    models: Vec<String>,
    /// LLM calls this run made (steps reused from another run not counted).
    llm_calls: usize,
    reused_steps: usize,
    input_tokens: u64,
    output_tokens: u64,
    cost_micro_usd: i64,
    unpriced_calls: usize,
    duration_ms: Option<i64>,
    answer: String,
}

/// A tool call of one run against the other's at the same place.
#[derive(Serialize, Debug, PartialEq, Eq)]
struct CallDiff {
    /// `same`, `changed` (arguments), `removed` (only in A) or `added` (only in B).
    change: &'static str,
    tool: String,
    a: Option<String>,
    b: Option<String>,
}

#[derive(Serialize)]
struct Diff {
    a: Side,
    b: Side,
    same_answer: bool,
    tool_calls: Vec<CallDiff>,
}

/// Every tool call a run's model asked for, in order: (tool, arguments).
fn calls(run: &pb::Run) -> Vec<(String, String)> {
    run.steps
        .iter()
        .filter_map(|s| match &s.payload {
            Some(Payload::LlmResponse(r)) => {
                Some(r.tool_calls.iter().map(|c| (c.name.clone(), c.arguments_json.clone())))
            }
            _ => None,
        })
        .flatten()
        .collect()
}

fn same_json(a: &str, b: &str) -> bool {
    match (serde_json::from_str::<serde_json::Value>(a), serde_json::from_str::<serde_json::Value>(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The calls of A and B aligned in order: the same tool at the same place is the same call
/// (changed if its arguments differ); a tool the other run does not call there is removed from
/// (or added to) the sequence.
fn align(a: &[(String, String)], b: &[(String, String)]) -> Vec<CallDiff> {
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let (na, nb) = (names(a), names(b));
    let ops = similar::capture_diff_slices(similar::Algorithm::Myers, &na, &nb);
    let mut out = Vec::new();
    for op in ops {
        for change in op.iter_changes(&na, &nb) {
            let (ia, ib) = (change.old_index(), change.new_index());
            let entry = match (ia, ib) {
                (Some(i), Some(j)) => CallDiff {
                    change: if same_json(&a[i].1, &b[j].1) { "same" } else { "changed" },
                    tool: a[i].0.clone(),
                    a: Some(a[i].1.clone()),
                    b: Some(b[j].1.clone()),
                },
                (Some(i), None) => {
                    CallDiff { change: "removed", tool: a[i].0.clone(), a: Some(a[i].1.clone()), b: None }
                }
                (None, Some(j)) => CallDiff { change: "added", tool: b[j].0.clone(), a: None, b: Some(b[j].1.clone()) },
                (None, None) => continue,
            };
            out.push(entry);
        }
    }
    out
}

fn side(got: &pb::GetRunResponse) -> Side {
    let run = got.run.clone().unwrap_or_default();
    let mut models: Vec<String> = Vec::new();
    let mut llm_calls = 0;
    for s in run.steps.iter().filter(|s| s.attempt > 0) {
        if let Some(Payload::LlmResponse(r)) = &s.payload {
            llm_calls += 1;
            if !models.contains(&r.model) {
                models.push(r.model.clone());
            }
        }
    }
    let at = |t: &Option<prost_types::Timestamp>| t.as_ref().and_then(nightshift_core::time::from_pb);
    let duration_ms = at(&run.started_at).zip(at(&run.finished_at)).map(|(a, b)| (b - a).num_milliseconds());
    let usage = run.usage.unwrap_or_default();
    Side {
        run: run.id.clone(),
        status: output::status_name(run.status),
        models,
        llm_calls,
        reused_steps: run.steps.iter().filter(|s| s.attempt == 0).count(),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_micro_usd: got.costs.iter().filter_map(|c| c.cost_micro_usd).sum(),
        unpriced_calls: got.costs.iter().filter(|c| c.cost_micro_usd.is_none()).count(),
        duration_ms,
        answer: run.result.clone(),
    }
}

/// The diff of two runs as `GetRun` returned them.
fn diff_of(ra: &pb::GetRunResponse, rb: &pb::GetRunResponse) -> Diff {
    let default = pb::Run::default();
    let (runa, runb) = (ra.run.as_ref().unwrap_or(&default), rb.run.as_ref().unwrap_or(&default));
    Diff {
        same_answer: runa.result == runb.result,
        tool_calls: align(&calls(runa), &calls(runb)),
        a: side(ra),
        b: side(rb),
    }
}

/// `runs diff A B`.
pub(crate) async fn diff(server: &Server, out: Output, a: String, b: String) -> anyhow::Result<()> {
    let mut m = server.manager().await?;
    let ra = m.get_run(pb::GetRunRequest { run_id: a }).await?.into_inner();
    let rb = m.get_run(pb::GetRunRequest { run_id: b }).await?.into_inner();
    output::print(out, &diff_of(&ra, &rb), diff_table)
}

/// One original and its replay in a `--last N` summary.
#[derive(Serialize)]
struct Pair {
    original: String,
    replay: String,
    status: String,
    answer_changed: bool,
    tool_calls_changed: usize,
    cost_delta_micro_usd: i64,
    tokens_delta: i64,
}

#[derive(Serialize)]
struct Summary {
    runs: usize,
    answers_changed: usize,
    runs_with_tool_calls_changed: usize,
    cost_delta_micro_usd: i64,
    pairs: Vec<Pair>,
}

/// `runs diff --agent NAME --last N`: replays the agent's last `last` ended runs (from the
/// start, tools frozen) and summarizes what changed.
pub(crate) async fn diff_last(
    server: &Server,
    out: Output,
    agent: &str,
    last: u32,
    agent_version: u64,
    model: String,
) -> anyhow::Result<()> {
    use nightshift_core::RunStatus;
    let mut m = server.manager().await?;
    let ended: Vec<i32> =
        [RunStatus::Succeeded, RunStatus::Failed, RunStatus::TimedOut].iter().map(|s| s.to_pb() as i32).collect();
    let req = pb::ListRunsRequest {
        agent: server.agent(agent),
        statuses: ended,
        // Replays are runs of the agent too: only runs that are not replays are compared, among
        // the newest thousand ended ones.
        page_size: 1000,
        page_token: String::new(),
        namespace: String::new(),
    };
    let originals: Vec<pb::Run> = (m.list_runs(req).await?.into_inner().runs.into_iter())
        .filter(|r| r.replay_of.is_empty())
        .take(last as usize)
        .collect();
    anyhow::ensure!(!originals.is_empty(), "agent '{agent}' has no ended run to replay");
    let mut replays = Vec::new();
    for r in &originals {
        let req = pb::ReplayRunRequest {
            run_id: r.id.clone(),
            agent_version,
            model: model.clone(),
            tools: pb::ReplayTools::Frozen as i32,
            ..Default::default()
        };
        replays.push(m.replay_run(req).await?.into_inner().run.unwrap_or_default().id);
    }
    let mut pairs = Vec::new();
    for (original, replay) in originals.iter().zip(&replays) {
        let rb = wait_ended(&mut m, replay).await?;
        let ra = m.get_run(pb::GetRunRequest { run_id: original.id.clone() }).await?.into_inner();
        let d = diff_of(&ra, &rb);
        let tokens = |s: &Side| (s.input_tokens + s.output_tokens) as i64;
        pairs.push(Pair {
            original: original.id.clone(),
            replay: replay.clone(),
            status: d.b.status.clone(),
            answer_changed: !d.same_answer,
            tool_calls_changed: d.tool_calls.iter().filter(|c| c.change != "same").count(),
            cost_delta_micro_usd: d.b.cost_micro_usd - d.a.cost_micro_usd,
            tokens_delta: tokens(&d.b) - tokens(&d.a),
        });
    }
    let summary = Summary {
        runs: pairs.len(),
        answers_changed: pairs.iter().filter(|p| p.answer_changed).count(),
        runs_with_tool_calls_changed: pairs.iter().filter(|p| p.tool_calls_changed > 0).count(),
        cost_delta_micro_usd: pairs.iter().map(|p| p.cost_delta_micro_usd).sum(),
        pairs,
    };
    output::print(out, &summary, summary_table)
}

/// Waits (up to 10 minutes) for run `id` to end; returns it with its costs.
async fn wait_ended(
    m: &mut pb::manager_service_client::ManagerServiceClient<nightshift_rpc::CallChannel>,
    id: &str,
) -> anyhow::Result<pb::GetRunResponse> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let got = m.get_run(pb::GetRunRequest { run_id: id.to_owned() }).await?.into_inner();
        let status = got.run.as_ref().and_then(|r| nightshift_core::RunStatus::from_pb(r.status()));
        if status.is_some_and(|s| s.is_terminal()) {
            return Ok(got);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "replay {id} did not end within 10 minutes");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

fn signed_usd(m: i64) -> String {
    let usd = nightshift_core::cost::format_usd(m.unsigned_abs());
    if m < 0 { format!("-{usd}") } else { format!("+{usd}") }
}

fn summary_table(s: &Summary) -> String {
    let mut t = new_table(&["ORIGINAL", "REPLAY", "STATUS", "ANSWER", "TOOL CALLS CHANGED", "TOKENS Δ", "COST Δ"]);
    for p in &s.pairs {
        t.add_row(vec![
            p.original.clone(),
            p.replay.clone(),
            p.status.clone(),
            (if p.answer_changed { "changed" } else { "same" }).to_owned(),
            p.tool_calls_changed.to_string(),
            format!("{:+}", p.tokens_delta),
            signed_usd(p.cost_delta_micro_usd),
        ]);
    }
    format!(
        "{t}\n\n{} runs replayed: {} answers changed, {} with tool calls changed, cost {}\n",
        s.runs,
        s.answers_changed,
        s.runs_with_tool_calls_changed,
        signed_usd(s.cost_delta_micro_usd)
    )
}

fn diff_table(d: &Diff) -> String {
    let usd = |m: i64| nightshift_core::cost::format_usd(u64::try_from(m).unwrap_or(0));
    let cost = |s: &Side| match s.unpriced_calls {
        0 => usd(s.cost_micro_usd),
        n => format!("{} + {n} unpriced", usd(s.cost_micro_usd)),
    };
    let ms = |s: &Side| s.duration_ms.map(|m| format!("{:.1} s", m as f64 / 1000.0)).unwrap_or_else(|| "—".into());
    let mut t = new_table(&["", "A", "B"]);
    let rows: Vec<(&str, String, String)> = vec![
        ("run", d.a.run.clone(), d.b.run.clone()),
        ("status", d.a.status.clone(), d.b.status.clone()),
        ("models", d.a.models.join(", "), d.b.models.join(", ")),
        ("llm calls", d.a.llm_calls.to_string(), d.b.llm_calls.to_string()),
        ("reused steps", d.a.reused_steps.to_string(), d.b.reused_steps.to_string()),
        (
            "tokens",
            format!("in {} · out {}", d.a.input_tokens, d.a.output_tokens),
            format!("in {} · out {}", d.b.input_tokens, d.b.output_tokens),
        ),
        ("cost", cost(&d.a), cost(&d.b)),
        ("duration", ms(&d.a), ms(&d.b)),
    ];
    for (k, a, b) in rows {
        t.add_row(vec![k.to_owned(), a, b]);
    }
    let mut s = format!("{t}\n\ntool calls:\n");
    for c in &d.tool_calls {
        let mark = match c.change {
            "same" => "=",
            "changed" => "~",
            "removed" => "-",
            _ => "+",
        };
        let args = match (&c.a, &c.b) {
            (Some(a), Some(b)) if c.change == "changed" => format!("{a} → {b}"),
            (Some(a), _) => a.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => String::new(),
        };
        s.push_str(&format!("  {mark} {} {args}\n", c.tool));
    }
    if d.tool_calls.is_empty() {
        s.push_str("  (none)\n");
    }
    if d.same_answer {
        s.push_str(&format!("\nanswer (same): {}\n", d.a.answer));
    } else {
        s.push_str(&format!("\nanswer A: {}\nanswer B: {}\n", d.a.answer, d.b.answer));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(tool: &str, args: &str) -> (String, String) {
        (tool.into(), args.into())
    }

    #[test]
    fn calls_are_aligned_by_tool_in_order() {
        let a = [c("search", r#"{"q":"x"}"#), c("fetch", r#"{"u":1}"#), c("mail", "{}")];
        let b = [c("search", r#"{ "q": "x" }"#), c("fetch", r#"{"u":2}"#), c("save", "{}")];
        let got: Vec<(&str, String)> = align(&a, &b).into_iter().map(|d| (d.change, d.tool)).collect();
        assert_eq!(
            got,
            [
                ("same", "search".into()),
                ("changed", "fetch".into()),
                ("removed", "mail".into()),
                ("added", "save".into())
            ]
        );
    }
}
