//! `nightshift models pull|list`: the embedded provider's model files.
use std::path::{Path, PathBuf};

use nightshift_llm::embedded::catalog;
use serde::Serialize;

use crate::args::{ModelsCommand, Output};
use crate::output::{new_table, print};

pub(crate) async fn run(output: Output, cmd: ModelsCommand) -> anyhow::Result<()> {
    let cache = catalog::cache_dir();
    match cmd {
        ModelsCommand::Pull { name } => {
            let path = pull(&name, &cache).await?;
            println!("{name}: {}", path.display());
            Ok(())
        }
        ModelsCommand::List => {
            let rows: Vec<ModelView> = catalog::list(&cache)
                .into_iter()
                .map(|m| ModelView {
                    name: m.model.name,
                    present: m.present,
                    size_mb: m.model.bytes / 1_000_000,
                    path: m.path,
                    description: m.model.description,
                })
                .collect();
            print(output, &rows, |rows| {
                let mut t = new_table(&["NAME", "PULLED", "SIZE", "DESCRIPTION"]);
                for r in rows {
                    t.add_row(vec![
                        r.name.to_owned(),
                        if r.present { "yes".into() } else { "no".into() },
                        format!("{} MB", r.size_mb),
                        r.description.to_owned(),
                    ]);
                }
                format!("{t}\n")
            })
        }
    }
}

#[derive(Serialize)]
struct ModelView {
    name: &'static str,
    present: bool,
    size_mb: u64,
    path: PathBuf,
    description: &'static str,
}

/// Fetches `name` into `cache` with a progress bar on stderr (hidden when stderr is not a
/// terminal); returns its path at once when it is there.
pub(crate) async fn pull(name: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("pulling {name}"));
    let mut progress = |done: u64, total: Option<u64>| {
        if let Some(total) = total {
            bar.set_length(total);
        }
        bar.set_position(done);
    };
    let path = catalog::pull(name, cache, &mut progress).await;
    bar.finish_and_clear();
    Ok(path?)
}
