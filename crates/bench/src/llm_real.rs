//! `llm-real`: the embedded stack (manager over gRPC, scheduler, worker, SQLite, in-memory queue)
//! running an agent on a **real** small LLM — SmolLM2-135M-Instruct, in-process
//! (`provider: embedded`, the default) or on llama.cpp's `llama-server` (installed by
//! `scripts/llm.sh`), in structured-output mode with the local `calculate_area` tool — one run
//! at a time. It shows how much the platform adds to a real
//! model's latency: per run, trigger → completed minus the LLM calls' own latency (measured by
//! the worker around each HTTP call) minus the tool calls' durations.
use std::time::{Duration, Instant};

use anyhow::Context;
use nightshift_core::{AgentSpec, AgentState, pb};

use crate::backend::BackendKind;
use crate::dispatch::Stack;
use crate::stats::Row;
use crate::{Scenario, sys};

/// Parameters of `llm-real`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct LlmRealArgs {
    /// Measured runs (one at a time, after one unmeasured run).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// llama.cpp inference threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = RealProvider::Embedded)]
    pub provider: RealProvider,
}

/// Where `llm-real`'s model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RealProvider {
    /// In the worker's process (`provider: embedded`).
    Embedded,
    /// llama.cpp's server, over its OpenAI-compatible API.
    Llama,
}

impl Default for LlmRealArgs {
    fn default() -> Self {
        Self { runs: 10, threads: 2, provider: RealProvider::Embedded }
    }
}

fn duration_ms(d: Option<&prost_types::Duration>) -> f64 {
    d.and_then(|d| nightshift_core::duration::from_pb(d).ok()).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

pub async fn llm_real(args: &LlmRealArgs) -> anyhow::Result<Scenario> {
    let (name, llama, model) = match args.provider {
        RealProvider::Llama => {
            let threads = args.threads;
            let llama = tokio::task::spawn_blocking(move || {
                nightshift_testkit::llama::LlamaServer::start_with_threads(threads)
            })
            .await
            .context("starting llama-server")?;
            let model = format!("{{provider: openai, model: smollm2, base_url: '{}'", llama.base_url);
            ("llm-real embedded stack (SmolLM2-135M on llama.cpp, structured mode)", Some(llama), model)
        }
        RealProvider::Embedded => {
            let catalog_name = nightshift_llm::embedded::catalog::DEFAULT_MODEL;
            nightshift_llm::embedded::catalog::fetch(catalog_name).await?;
            let model = format!("{{provider: embedded, model: {catalog_name}");
            ("llm-real embedded stack (SmolLM2-135M in-process, provider: embedded)", None, model)
        }
    };
    let name = name.to_owned();
    eprintln!("== {name}: {} runs", args.runs);
    let stack = Stack::start(BackendKind::Embedded, 4, false).await?;
    let spec = AgentSpec::from_yaml(&format!(
        "name: real\nmodel: {model}, tool_call_mode: structured, \
         temperature: 0, max_tokens: 256, request_timeout: 120s}}\n\
         system_instruction: You compute areas of shapes with the calculate_area tool.\n\
         task: {{query: 'What is the area of a rectangle that is 3 wide and 4 high? Call calculate_area, then answer.'}}\n\
         schedule: {{manual: true}}\npolicy: {{max_retries: 0, max_steps: 3, timeout: 300s}}\n\
         tools: {{local: [calculate_area]}}"
    ))
    .map_err(|e| anyhow::anyhow!("benchmark agent spec does not validate: {e}"))?;
    stack.backends.store.create_agent(&spec, AgentState::Active).await?;

    let (mut total, mut llm, mut tools, mut overhead, mut calls) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut failed = 0u64;
    let cpu0 = sys::cpu_time();
    for i in 0..=args.runs {
        let t = Instant::now();
        let id = stack.trigger("real").await?;
        let seen = stack.wait_done(&id, Duration::from_secs(300)).await?;
        let Some(done) = seen.completed.filter(|_| !seen.failed) else {
            failed += 1;
            continue;
        };
        let run = stack
            .client
            .clone()
            .get_run(pb::GetRunRequest { run_id: id.clone() })
            .await?
            .into_inner()
            .run
            .context("GetRun returned no run")?;
        if i == 0 {
            continue; // warm-up: model pages, prompt cache, connections
        }
        let (mut l, mut tl, mut n) = (0.0, 0.0, 0.0);
        for s in &run.steps {
            match &s.payload {
                Some(pb::run_step::Payload::LlmResponse(r)) => {
                    l += duration_ms(r.latency.as_ref());
                    n += 1.0;
                }
                Some(pb::run_step::Payload::ToolResult(r)) => tl += duration_ms(r.duration.as_ref()),
                Some(pb::run_step::Payload::ToolStarted(_) | pb::run_step::Payload::MemoryStored(_)) | None => {}
            }
        }
        let whole = (done - t).as_secs_f64() * 1e3;
        total.push(whole);
        llm.push(l);
        tools.push(tl);
        overhead.push(whole - l - tl);
        calls.push(n);
    }
    let cpu = (sys::cpu_time() - cpu0).as_secs_f64();
    stack.stop().await;
    drop(llama);
    anyhow::ensure!(!total.is_empty(), "no run of the real LLM completed ({failed} failed)");
    let share: Vec<f64> = overhead.iter().zip(&total).map(|(o, t)| 100.0 * o / t).collect();
    let rows = vec![
        Row::new(&name, "run: trigger → completed", "ms", "run", &total),
        Row::new(&name, "LLM calls (latency measured by the worker)", "ms", "run", &llm),
        Row::new(&name, "LLM calls per run", "calls", "run", &calls),
        Row::new(&name, "tool calls", "ms", "run", &tools),
        Row::new(&name, "platform overhead (run − LLM − tools)", "ms", "run", &overhead),
        Row::new(&name, "platform overhead share", "%", "run", &share),
    ];
    Ok(Scenario {
        name,
        params: serde_json::to_value(args)?,
        rows,
        counters: serde_json::json!({"failed_runs": failed, "completed_runs": total.len(), "cpu_seconds_bench_process": cpu}),
    })
}
