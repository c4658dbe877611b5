//! Memory service configuration (`config/memory.toml`, env prefix `NIGHTSHIFT_MEMORY`).
//!
//! Every memory type names its store explicitly; a missing or unreachable store is a start-up
//! error, never a silent fall back to memory.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the memory service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// gRPC listen address.
    pub listen: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Prometheus `/metrics` listen address (empty = off).
    pub metrics_listen: String,
    /// Store of each memory type.
    pub stores: StoresConfig,
    /// Vector index for semantic search; empty = no Search.
    pub vector: VectorConfig,
    /// Embedding model; required when `vector.url` is set.
    pub embedder: EmbedderConfig,
    /// Types whose records are embedded and indexed on Store (`long_term`, `procedural`, ...).
    pub index_types: Vec<String>,
    /// Lifetime of working memory stored without a TTL (the service does not see run ends).
    #[serde(with = "nightshift_core::config::duration_text")]
    pub working_ttl: Duration,
    /// LLM that writes episodic summaries; `provider = ""` = no Summarize.
    pub summarizer: SummarizerConfig,
}

/// The LLM used by Summarize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SummarizerConfig {
    /// `openai` (any OpenAI-compatible server), `anthropic`, or empty for none.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// API base URL; empty = the provider's default.
    pub base_url: String,
    /// Environment variable holding the API key; empty = no auth (e.g. local llama.cpp).
    pub api_key_env: String,
    /// Longest summary, in tokens.
    pub max_tokens: u32,
    /// Per-call timeout.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub request_timeout: Duration,
}

impl Default for SummarizerConfig {
    fn default() -> Self {
        Self {
            provider: String::new(),
            model: String::new(),
            base_url: String::new(),
            api_key_env: String::new(),
            max_tokens: 512,
            request_timeout: Duration::from_secs(120),
        }
    }
}

impl SummarizerConfig {
    /// The model configuration for `nightshift_llm::model_from_config`; `None` when disabled.
    pub fn model_config(&self) -> Result<Option<nightshift_core::ModelConfig>, crate::MemoryError> {
        use nightshift_core::{ModelProvider, SecretRef, ToolCallMode};
        let provider = match self.provider.as_str() {
            "" => return Ok(None),
            "openai" => ModelProvider::OpenAi,
            "anthropic" => ModelProvider::Anthropic,
            other => {
                return Err(crate::MemoryError::Config(format!(
                    "summarizer.provider: '{other}' is not one of openai, anthropic"
                )));
            }
        };
        if self.model.is_empty() {
            return Err(crate::MemoryError::Config("summarizer.model is required".into()));
        }
        Ok(Some(nightshift_core::ModelConfig {
            provider,
            model: self.model.clone(),
            base_url: (!self.base_url.is_empty()).then(|| self.base_url.clone()),
            api_key: (!self.api_key_env.is_empty()).then(|| SecretRef::Env(self.api_key_env.clone())),
            temperature: Some(0.2),
            max_tokens: Some(self.max_tokens),
            request_timeout: self.request_timeout,
            tool_call_mode: ToolCallMode::default(),
        }))
    }
}

/// One store URL per memory type: `memory://`, `redis://HOST:PORT[/DB][?prefix=NAME]`,
/// `sqlite://PATH` or `postgres://USER@HOST/DB`. Types naming the same URL share one connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoresConfig {
    /// Store of working memory.
    pub working: String,
    /// Store of episodic memory.
    pub episodic: String,
    /// Store of long-term memory.
    pub long_term: String,
    /// Store of procedural memory.
    pub procedural: String,
}

/// The vector index.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VectorConfig {
    /// `inprocess://` (exact search, not persistent, up to ~100 k items) or
    /// `chroma://HOST:PORT/COLLECTION` (`chromas://` for HTTPS) or
    /// `pgvector://USER@HOST:PORT/DB?table=NAME` (Postgres with the vector extension) or
    /// `qdrant://HOST:6333/COLLECTION` (`qdrants://` for HTTPS); empty = none.
    pub url: String,
    /// Qdrant: environment variable holding the API key (empty = none).
    pub api_key_env: String,
}

/// The embedding model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderConfig {
    /// `none`, `minilm` (embedded all-MiniLM-L6-v2) or `openai` (an OpenAI-compatible API).
    pub kind: String,
    /// `minilm`: directory with model.safetensors, tokenizer.json, config.json
    /// (see `crates/memory/scripts/fetch-model.sh`).
    pub model_path: String,
    /// `openai`: API base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// `openai`: model name.
    pub model: String,
    /// `openai`: environment variable holding the API key (empty = no auth).
    pub api_key_env: String,
    /// `openai`: vector size.
    pub dims: usize,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            kind: "none".into(),
            model_path: String::new(),
            base_url: String::new(),
            model: String::new(),
            api_key_env: String::new(),
            dims: 0,
        }
    }
}

impl Default for StoresConfig {
    fn default() -> Self {
        Self {
            working: "memory://".into(),
            episodic: "sqlite://nightshift-memory.db".into(),
            long_term: "sqlite://nightshift-memory.db".into(),
            procedural: "sqlite://nightshift-memory.db".into(),
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50054".into(),
            log_format: "text".into(),
            metrics_listen: String::new(),
            stores: StoresConfig::default(),
            vector: VectorConfig::default(),
            embedder: EmbedderConfig::default(),
            index_types: vec!["long_term".into(), "procedural".into()],
            working_ttl: Duration::from_secs(24 * 3600),
            summarizer: SummarizerConfig::default(),
        }
    }
}

impl StoresConfig {
    /// The URL configured for `kind`.
    pub fn url(&self, kind: crate::MemoryType) -> &str {
        match kind {
            crate::MemoryType::Working => &self.working,
            crate::MemoryType::Episodic => &self.episodic,
            crate::MemoryType::LongTerm => &self.long_term,
            crate::MemoryType::Procedural => &self.procedural,
        }
    }
}
