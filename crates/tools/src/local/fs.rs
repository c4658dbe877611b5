//! `read_file` and `list_dir`, confined to the worker's configured file root.
//!
//! Confinement: a requested path may not contain `..`; an absolute path must lie inside the root;
//! the joined path is canonicalised (resolving every symlink) and must still lie inside the
//! canonical root, so a symlink pointing outside is refused too.
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::parse_args;
use nightshift_core::governance::Hints;

use crate::{Tool, ToolDef, ToolError, ToolSource, ToolsConfig};

/// The directory file tools are confined to.
#[derive(Debug)]
struct FileRoot {
    /// Canonical root, or why there is none.
    root: Result<PathBuf, String>,
}

impl FileRoot {
    fn new(config: &ToolsConfig) -> Self {
        let root = match &config.file_root {
            None => Err("no file root is configured on this worker, so file tools are disabled".to_owned()),
            Some(p) => std::fs::canonicalize(p).map_err(|e| {
                tracing::warn!(root = %p.display(), error = %e, "file root of the file tools is not usable");
                "the worker's file root is not accessible".to_owned()
            }),
        };
        Self { root }
    }

    /// Resolves `requested` to a canonical path inside the root.
    async fn resolve(&self, requested: &str) -> Result<PathBuf, ToolError> {
        let root = self.root.as_ref().map_err(|e| ToolError::Failed(e.clone()))?;
        let req = Path::new(requested);
        let mut relative = PathBuf::new();
        for c in req.components() {
            match c {
                Component::ParentDir => {
                    return Err(ToolError::Denied(format!(
                        "'{requested}': '..' is not allowed; paths are relative to the file root"
                    )));
                }
                Component::Normal(part) => relative.push(part),
                Component::CurDir => {}
                // An absolute path is accepted only when it names something inside the root.
                Component::RootDir | Component::Prefix(_) => {}
            }
        }
        if req.is_absolute() {
            let Ok(inner) = req.strip_prefix(root) else {
                return Err(ToolError::Denied(format!(
                    "'{requested}' is outside the file root; use a path relative to the root"
                )));
            };
            relative = inner.to_path_buf();
        }
        let canonical = tokio::fs::canonicalize(root.join(&relative)).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ToolError::Failed(format!("'{requested}' does not exist")),
            _ => ToolError::Failed(format!("'{requested}': {e}")),
        })?;
        if !canonical.starts_with(root) {
            return Err(ToolError::Denied(format!(
                "'{requested}' resolves (through a symlink) to outside the file root"
            )));
        }
        Ok(canonical)
    }

    /// `path` relative to the root, for display (the model never sees host paths).
    fn display(&self, path: &Path) -> String {
        match self.root.as_ref().ok().and_then(|r| path.strip_prefix(r).ok()) {
            Some(p) if p.as_os_str().is_empty() => ".".into(),
            Some(p) => p.display().to_string(),
            None => path.display().to_string(),
        }
    }
}

/// Reads a UTF-8 text file under the file root.
#[derive(Debug)]
pub struct ReadFile {
    root: Arc<FileRoot>,
    max_bytes: u64,
}

impl ReadFile {
    /// A `read_file` confined to `config.file_root`, returning at most `config.read_max_bytes`.
    pub fn new(config: &ToolsConfig) -> Self {
        Self { root: Arc::new(FileRoot::new(config)), max_bytes: config.read_max_bytes.max(1) }
    }
}

#[derive(Deserialize)]
struct ReadArgs {
    path: String,
    #[serde(default)]
    offset: u64,
    max_bytes: Option<u64>,
}

#[async_trait]
impl Tool for ReadFile {
    fn definition(&self) -> ToolDef {
        ToolDef {
            name: "read_file".into(),
            description: format!(
                "Reads a UTF-8 text file. path is relative to the file root ('..' is not allowed). Returns at most \
                 {} bytes from offset (default 0); a longer file is cut and the cut is reported.",
                self.max_bytes
            ),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "minLength": 1},
                    "offset": {"type": "integer", "minimum": 0},
                    "max_bytes": {"type": "integer", "minimum": 1},
                },
                "required": ["path"],
                "additionalProperties": false,
            }),
            source: ToolSource::Local,
            hints: Hints { read_only: true, ..Hints::default() },
        }
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let a: ReadArgs = parse_args(args)?;
        let path = self.root.resolve(&a.path).await?;
        let meta = tokio::fs::metadata(&path).await.map_err(|e| ToolError::Failed(format!("'{}': {e}", a.path)))?;
        if meta.is_dir() {
            return Err(ToolError::Failed(format!("'{}' is a directory; use list_dir", a.path)));
        }
        if !meta.is_file() {
            return Err(ToolError::Failed(format!("'{}' is not a regular file", a.path)));
        }
        let len = meta.len();
        let limit = a.max_bytes.unwrap_or(self.max_bytes).min(self.max_bytes);
        let mut file =
            tokio::fs::File::open(&path).await.map_err(|e| ToolError::Failed(format!("'{}': {e}", a.path)))?;
        if a.offset > 0 {
            file.seek(std::io::SeekFrom::Start(a.offset)).await.map_err(|e| ToolError::Failed(e.to_string()))?;
        }
        let mut buf = Vec::new();
        file.take(limit).read_to_end(&mut buf).await.map_err(|e| ToolError::Failed(format!("'{}': {e}", a.path)))?;
        let text = match String::from_utf8(buf) {
            Ok(t) => t,
            // A cut in the middle of a multi-byte character is not binary data: drop the tail.
            Err(e) if e.utf8_error().error_len().is_none() => {
                let valid = e.utf8_error().valid_up_to();
                let mut bytes = e.into_bytes();
                bytes.truncate(valid);
                String::from_utf8(bytes).map_err(|e| ToolError::Failed(e.to_string()))?
            }
            Err(_) => {
                return Err(ToolError::Failed(format!("'{}' is not a UTF-8 text file ({len} bytes)", a.path)));
            }
        };
        let end = a.offset + text.len() as u64;
        if end < len {
            Ok(format!(
                "{text}\n[truncated: showed bytes {}..{end} of {len}; call read_file again with offset={end} for more]",
                a.offset
            ))
        } else {
            Ok(text)
        }
    }
}

/// Lists a directory under the file root.
#[derive(Debug)]
pub struct ListDir {
    root: Arc<FileRoot>,
    max_entries: usize,
}

impl ListDir {
    /// A `list_dir` confined to `config.file_root`, returning at most `config.list_max_entries`.
    pub fn new(config: &ToolsConfig) -> Self {
        Self { root: Arc::new(FileRoot::new(config)), max_entries: config.list_max_entries.max(1) }
    }
}

#[derive(Deserialize)]
struct ListArgs {
    #[serde(default = "dot")]
    path: String,
}

fn dot() -> String {
    ".".into()
}

#[async_trait]
impl Tool for ListDir {
    fn definition(&self) -> ToolDef {
        ToolDef {
            name: "list_dir".into(),
            description: "Lists a directory as JSON: entries with name, type (file, dir, symlink, other) and size \
                in bytes, sorted by name. path is relative to the file root (default: the root itself)."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {"path": {"type": "string", "minLength": 1}},
                "additionalProperties": false,
            }),
            source: ToolSource::Local,
            hints: Hints { read_only: true, ..Hints::default() },
        }
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let a: ListArgs = parse_args(args)?;
        let path = self.root.resolve(&a.path).await?;
        let mut dir = tokio::fs::read_dir(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotADirectory => ToolError::Failed(format!("'{}' is not a directory", a.path)),
            _ => ToolError::Failed(format!("'{}': {e}", a.path)),
        })?;
        let mut entries = Vec::new();
        let mut total = 0usize;
        while let Some(e) = dir.next_entry().await.map_err(|e| ToolError::Failed(e.to_string()))? {
            total += 1;
            // Symlinks are described, not followed: their target may lie outside the root.
            let meta = e.metadata().await.ok();
            let kind = match e.file_type().await {
                Ok(t) if t.is_symlink() => "symlink",
                Ok(t) if t.is_dir() => "dir",
                Ok(t) if t.is_file() => "file",
                _ => "other",
            };
            let size = if kind == "file" { meta.map(|m| m.len()) } else { None };
            entries.push((e.file_name().to_string_lossy().into_owned(), kind, size));
        }
        entries.sort_by(|x, y| x.0.cmp(&y.0));
        let truncated = entries.len() > self.max_entries;
        entries.truncate(self.max_entries);
        let list: Vec<Value> = entries
            .into_iter()
            .map(|(name, kind, size)| {
                let mut v = json!({"name": name, "type": kind});
                if let Some(s) = size {
                    v["size"] = json!(s);
                }
                v
            })
            .collect();
        let mut out = json!({"path": self.root.display(&path), "entries": list, "total": total});
        if truncated {
            out["truncated"] = json!(true);
        }
        Ok(out.to_string())
    }
}
