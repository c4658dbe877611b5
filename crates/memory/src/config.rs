//! Memory service configuration (`config/memory.toml`, env prefix `NIGHTSHIFT_MEMORY`).
//!
//! Every memory type names its store explicitly; a missing or unreachable store is a start-up
//! error, never a silent fall back to memory.
use std::time::Duration;

use nightshift_rpc::ServerOptions;
use serde::{Deserialize, Serialize};

use crate::types::MemoryType;

/// Settings of the memory service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// `listen`, `metrics_listen`, `log_format`.
    #[serde(flatten)]
    pub server: ServerOptions,
    /// Store of each memory type.
    pub stores: StoresConfig,
    /// Vector index for semantic search; empty = no Search.
    pub vector: VectorConfig,
    /// Embedding model; required when `vector.url` is set.
    pub embedder: EmbedderConfig,
    /// Types whose records are embedded and indexed on Store (`working`, `episodic`, `long_term`,
    /// `procedural`).
    pub index_types: Vec<MemoryType>,
    /// Lifetime of working memory stored without a TTL: the backstop for the notes of a run
    /// whose worker died before forgetting them when the run ended.
    #[serde(with = "nightshift_core::config::duration_text")]
    pub working_ttl: Duration,
    /// LLM that writes episodic summaries, and when it does so on its own; `provider = ""` = no
    /// Summarize.
    pub summarizer: SummarizerConfig,
}

/// The LLM provider of Summarize (`summarizer.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SummarizerProvider {
    /// No summarizer: Summarize answers FAILED_PRECONDITION (`""` or `none`).
    #[default]
    #[serde(alias = "")]
    None,
    /// Any OpenAI-compatible server (`openai`).
    OpenAi,
    /// Anthropic's API (`anthropic`).
    Anthropic,
    /// A GGUF model run in this process (`embedded`): `model` is a catalog name
    /// (`nightshift models list`) or a file path.
    Embedded,
}

/// What an automatic summary does with the episodes it replaces (`summarizer.retention`).
/// Keeping them is not offered: the history would stay over budget and be summarized again on
/// every Store (the Summarize RPC can still keep them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoRetention {
    /// Excluded from Recall, still readable by id (`archive`).
    #[default]
    Archive,
    /// Deleted (`delete`).
    Delete,
}

impl From<AutoRetention> for crate::service::Retention {
    fn from(r: AutoRetention) -> Self {
        match r {
            AutoRetention::Archive => Self::Archive,
            AutoRetention::Delete => Self::Delete,
        }
    }
}

/// The LLM used by Summarize, and the budget over which the service summarizes an episodic
/// history by itself after a Store (both budgets 0 = only when Summarize is called).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SummarizerConfig {
    /// `openai` (any OpenAI-compatible server), `anthropic`, `embedded`, or empty for none.
    pub provider: SummarizerProvider,
    /// Model name (for `embedded`, a catalog name or a GGUF file path).
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
    /// Sampling seed, for summaries that are the same every time (tests); unset = random.
    pub seed: Option<u64>,
    /// Summarize a scope automatically once its unarchived episodic history is over this many
    /// estimated tokens (0 = no token limit). The default matches what a run's prompt shows of
    /// its memory (8,000 characters): older episodes would not reach the prompt anyway.
    pub budget_tokens: u32,
    /// … or over this many episodes (0 = no count limit).
    pub budget_episodes: u32,
    /// What an automatic summary does with the episodes it replaces: `archive` or `delete`.
    pub retention: AutoRetention,
}

impl Default for SummarizerConfig {
    fn default() -> Self {
        Self {
            provider: SummarizerProvider::None,
            model: String::new(),
            base_url: String::new(),
            api_key_env: String::new(),
            max_tokens: 512,
            request_timeout: Duration::from_secs(120),
            seed: None,
            budget_tokens: 2000,
            budget_episodes: 50,
            retention: AutoRetention::Archive,
        }
    }
}

impl SummarizerConfig {
    /// The model configuration for `nightshift_llm::model_from_config`; `None` when disabled.
    pub fn model_config(&self) -> Result<Option<nightshift_core::ModelConfig>, crate::MemoryError> {
        use nightshift_core::{ModelProvider, SecretRef, ToolCallMode};
        let provider = match self.provider {
            SummarizerProvider::None => return Ok(None),
            SummarizerProvider::OpenAi => ModelProvider::OpenAi,
            SummarizerProvider::Anthropic => ModelProvider::Anthropic,
            SummarizerProvider::Embedded => ModelProvider::Embedded,
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
            sampling: nightshift_core::Sampling { seed: self.seed, ..Default::default() },
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
    /// `qdrant://HOST:6334/COLLECTION` (gRPC; `qdrants://` for TLS); empty = none.
    pub url: String,
    /// Qdrant: environment variable holding the API key (empty = none).
    pub api_key_env: String,
}

/// The kind of embedding model (`embedder.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderKind {
    /// No embedder: no Search (`none` or `""`).
    #[default]
    #[serde(alias = "")]
    None,
    /// all-MiniLM-L6-v2 in-process (`minilm`).
    MiniLm,
    /// An OpenAI-compatible `/v1/embeddings` API (`openai`).
    OpenAi,
}

/// The embedding model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderConfig {
    /// `none`, `minilm` (embedded all-MiniLM-L6-v2) or `openai` (an OpenAI-compatible API).
    pub kind: EmbedderKind,
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
            kind: EmbedderKind::None,
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
            server: ServerOptions::listening_on("127.0.0.1:50054"),
            stores: StoresConfig::default(),
            vector: VectorConfig::default(),
            embedder: EmbedderConfig::default(),
            index_types: vec![MemoryType::LongTerm, MemoryType::Procedural],
            working_ttl: Duration::from_secs(24 * 3600),
            summarizer: SummarizerConfig::default(),
        }
    }
}

impl StoresConfig {
    /// The URL configured for `kind`.
    pub fn url(&self, kind: MemoryType) -> &str {
        match kind {
            MemoryType::Working => &self.working,
            MemoryType::Episodic => &self.episodic,
            MemoryType::LongTerm => &self.long_term,
            MemoryType::Procedural => &self.procedural,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<MemoryConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.toml");
        std::fs::write(&path, toml).unwrap();
        nightshift_core::config::load(Some(&path), "NIGHTSHIFT_MEMORY_TEST_UNUSED").map_err(|e| e.to_string())
    }

    #[test]
    fn example_config_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("memory.example.toml");
        let cfg: MemoryConfig = nightshift_core::config::load(Some(&path), "NIGHTSHIFT_MEMORY_TEST_UNUSED").unwrap();
        assert_eq!(cfg.embedder.kind, EmbedderKind::MiniLm);
        assert_eq!(cfg.summarizer.provider, SummarizerProvider::None);
        assert_eq!(cfg.index_types, [MemoryType::LongTerm, MemoryType::Procedural]);
    }

    #[test]
    fn defaults_round_trip() {
        assert_eq!(load("").unwrap(), MemoryConfig::default());
    }

    #[test]
    fn closed_sets_accept_their_spellings() {
        for (text, kind) in [
            ("", EmbedderKind::None),
            ("none", EmbedderKind::None),
            ("minilm", EmbedderKind::MiniLm),
            ("openai", EmbedderKind::OpenAi),
        ] {
            let cfg = load(&format!("[embedder]\nkind = \"{text}\"\n")).unwrap();
            assert_eq!(cfg.embedder.kind, kind, "{text}");
        }
        for (text, provider) in [
            ("", SummarizerProvider::None),
            ("none", SummarizerProvider::None),
            ("openai", SummarizerProvider::OpenAi),
            ("anthropic", SummarizerProvider::Anthropic),
            ("embedded", SummarizerProvider::Embedded),
        ] {
            let cfg = load(&format!("[summarizer]\nprovider = \"{text}\"\n")).unwrap();
            assert_eq!(cfg.summarizer.provider, provider, "{text}");
        }
        for (text, retention) in [("archive", AutoRetention::Archive), ("delete", AutoRetention::Delete)] {
            let cfg = load(&format!("[summarizer]\nretention = \"{text}\"\n")).unwrap();
            assert_eq!(cfg.summarizer.retention, retention, "{text}");
        }
        let cfg = load("index_types = [\"working\", \"episodic\", \"long_term\", \"procedural\"]\n").unwrap();
        assert_eq!(cfg.index_types, MemoryType::ALL);
    }

    #[test]
    fn unknown_values_fail_naming_the_allowed_ones() {
        let e = load("[embedder]\nkind = \"bert\"\n").unwrap_err();
        assert!(e.contains("bert") && e.contains("minilm") && e.contains("openai"), "{e}");
        let e = load("[summarizer]\nprovider = \"ollama\"\n").unwrap_err();
        assert!(e.contains("ollama") && e.contains("openai") && e.contains("anthropic"), "{e}");
        let e = load("[summarizer]\nretention = \"keep\"\n").unwrap_err();
        assert!(e.contains("keep") && e.contains("archive") && e.contains("delete"), "{e}");
        let e = load("index_types = [\"longterm\"]\n").unwrap_err();
        assert!(e.contains("longterm") && e.contains("long_term"), "{e}");
    }
}
