//! `nightshift models pull|list`: the embedded provider's model files.
use std::path::{Path, PathBuf};

use nightshift_llm::embedded::catalog;
use serde::Serialize;

use crate::args::{ModelsCommand, Output};
use crate::output::{new_table, print};

pub(crate) async fn run(output: Output, cmd: ModelsCommand) -> anyhow::Result<()> {
    let cache = catalog::cache_dir();
    match cmd {
        ModelsCommand::Pull { name, sha256, as_name } if catalog::is_url(&name) => {
            let bar = progress_bar(&name);
            let pulled =
                catalog::pull_url(&name, as_name.as_deref(), sha256.as_deref(), &cache, &mut |d, t| show(&bar, d, t))
                    .await;
            bar.finish_and_clear();
            let (name, path) = pulled?;
            println!("{name}: {}", path.display());
            Ok(())
        }
        ModelsCommand::Pull { name, sha256, as_name } => {
            anyhow::ensure!(
                sha256.is_none() && as_name.is_none(),
                "--sha256 and --as are for a URL; a catalog model's checksum is pinned"
            );
            let path = pull(&name, &cache).await?;
            println!("{name}: {}", path.display());
            Ok(())
        }
        ModelsCommand::List => {
            let rows: Vec<ModelView> = catalog::list(&cache)
                .into_iter()
                .map(|m| ModelView {
                    name: m.name,
                    present: m.present,
                    size_mb: m.bytes / 1_000_000,
                    path: m.path,
                    description: m.description,
                })
                .collect();
            print(output, &rows, |rows| {
                let mut t = new_table(&["NAME", "PULLED", "SIZE", "DESCRIPTION"]);
                for r in rows {
                    t.add_row(vec![
                        r.name.clone(),
                        if r.present { "yes".into() } else { "no".into() },
                        format!("{} MB", r.size_mb),
                        r.description.clone(),
                    ]);
                }
                format!("{t}\n")
            })
        }
    }
}

#[derive(Serialize)]
struct ModelView {
    name: String,
    present: bool,
    size_mb: u64,
    path: PathBuf,
    description: String,
}

/// Makes a model agents name available: fetches a catalog model into `cache` unless it is
/// there (with a progress bar); a model pulled from a URL, or named by path, must be there.
pub(crate) async fn pull(name: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    if catalog::find(name).is_none() {
        let path = catalog::resolve(name, cache)?;
        anyhow::ensure!(path.is_file(), "model file {} does not exist", path.display());
        return Ok(path);
    }
    let bar = progress_bar(name);
    let pulled = catalog::pull(name, cache, &mut |d, t| show(&bar, d, t)).await;
    bar.finish_and_clear();
    Ok(pulled?)
}

/// A download's progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("pulling {what}"));
    bar
}

fn show(bar: &indicatif::ProgressBar, done: u64, total: Option<u64>) {
    if let Some(total) = total {
        bar.set_length(total);
    }
    bar.set_position(done);
}
