//! MiniLM's word-embedding table, read from the model file row by row.
//!
//! The table is 30,522 rows of 384 `f32` — 47 MB, half the model's weights — and a forward
//! pass reads one row per token of its texts. Loaded into the heap with the rest of the
//! weights it was 47 MB of the process's resident memory for good, while a process embeds the
//! few thousand distinct tokens its agents' texts use. Here it stays in the file: the rows of a
//! batch's tokens are read (`pread`) when the batch is embedded, from the kernel's page cache
//! after the first time — memory the kernel can reclaim, not the process's heap. A row read is a
//! microsecond or two against the milliseconds of the forward pass that follows.
//!
//! The rows come from the file the model was loaded from (its open handle): a new model file
//! renamed over the path does not mix with the loaded one. Rewriting the file in place while a
//! process runs would change its rows, as it would for any model mapped from disk.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::MemoryError;

/// Where the table lies in the model file, and its open handle.
#[derive(Debug)]
pub(super) struct WordTable {
    file: File,
    /// Byte offset of row 0 in the file.
    start: u64,
    rows: usize,
    hidden: usize,
}

impl WordTable {
    /// Finds tensor `name` in `weights` (the whole of `file`, as read; `path` names it in errors)
    /// and checks it is a `rows × hidden` table of `f32`, whose rows will be read from `file`.
    pub(super) fn locate(
        path: &Path,
        file: File,
        weights: &[u8],
        name: &str,
        rows: usize,
        hidden: usize,
    ) -> Result<Self, MemoryError> {
        let bad = |why: String| MemoryError::Config(format!("{}: {why}", path.display()));
        let (header, metadata) = SafeTensors::read_metadata(weights).map_err(|e| bad(e.to_string()))?;
        let info = metadata.info(name).ok_or_else(|| bad(format!("no tensor {name}")))?;
        if rows == 0 || hidden == 0 {
            return Err(bad(format!(
                "config.json's vocab_size and hidden_size must be positive, not {rows} and {hidden}"
            )));
        }
        if info.dtype != Dtype::F32 || info.shape != [rows, hidden] {
            return Err(bad(format!(
                "{name} is {:?} {:?}, expected F32 [{rows}, {hidden}] (config.json)",
                info.dtype, info.shape
            )));
        }
        // The file: an 8-byte header length, the JSON header, then the tensors' bytes.
        let start = (8 + header + info.data_offsets.0) as u64;
        Ok(Self { file, start, rows, hidden })
    }

    /// The rows of `ids`, one after another (`ids.len() × hidden` values).
    pub(super) fn gather(&self, ids: &[u32]) -> Result<Vec<f32>, MemoryError> {
        let row = self.hidden * 4;
        let mut bytes = vec![0u8; ids.len() * row];
        for (&id, out) in ids.iter().zip(bytes.chunks_exact_mut(row)) {
            let id = id as usize;
            if id >= self.rows {
                return Err(MemoryError::backend(
                    "minilm",
                    format!("token id {id} is outside the vocabulary of {} words", self.rows),
                ));
            }
            self.file
                .read_exact_at(out, self.start + (id * row) as u64)
                .map_err(|e| MemoryError::backend("minilm", format!("reading the word-embedding table: {e}")))?;
        }
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is the test's verdict
    use safetensors::tensor::TensorView;

    use super::*;

    /// A model file holding a small table behind another tensor (so that the table does not
    /// start where the data does); the table's row `r` is `[r.0, r.1, r.2]`.
    fn model_file() -> (tempfile::NamedTempFile, Vec<u8>) {
        let before: Vec<u8> = [7.0f32; 5].iter().flat_map(|x| x.to_le_bytes()).collect();
        let table: Vec<u8> =
            (0..4).flat_map(|r| (0..3).map(move |c| r as f32 + c as f32 / 10.0)).flat_map(f32::to_le_bytes).collect();
        let tensors = [
            ("a.before", TensorView::new(Dtype::F32, vec![5], &before).unwrap()),
            ("embeddings.word_embeddings.weight", TensorView::new(Dtype::F32, vec![4, 3], &table).unwrap()),
        ];
        let bytes = safetensors::serialize(tensors, None).unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        (file, bytes)
    }

    fn locate(
        file: &tempfile::NamedTempFile,
        bytes: &[u8],
        name: &str,
        rows: usize,
        hidden: usize,
    ) -> Result<WordTable, MemoryError> {
        WordTable::locate(file.path(), file.reopen().unwrap(), bytes, name, rows, hidden)
    }

    #[test]
    fn gathers_the_rows_of_the_ids_in_order() {
        let (file, bytes) = model_file();
        let table = locate(&file, &bytes, "embeddings.word_embeddings.weight", 4, 3).unwrap();
        assert_eq!(table.gather(&[2, 0, 2]).unwrap(), [2.0, 2.1, 2.2, 0.0, 0.1, 0.2, 2.0, 2.1, 2.2]);
        assert!(table.gather(&[]).unwrap().is_empty());
        let err = table.gather(&[1, 4]).unwrap_err().to_string();
        assert!(err.contains("token id 4 is outside the vocabulary of 4 words"), "{err}");
    }

    #[test]
    fn a_table_of_another_shape_or_a_missing_one_is_refused() {
        let (file, bytes) = model_file();
        let err = locate(&file, &bytes, "embeddings.word_embeddings.weight", 4, 384).unwrap_err();
        assert!(err.to_string().contains("expected F32 [4, 384]"), "{err}");
        // A table whose rows hold no values: rows of no bytes, which gathering could not split.
        let empty =
            safetensors::serialize([("w", TensorView::new(Dtype::F32, vec![3, 0], &[]).unwrap())], None).unwrap();
        let zero = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(zero.path(), &empty).unwrap();
        let err = locate(&zero, &empty, "w", 3, 0).unwrap_err();
        assert!(err.to_string().contains("must be positive, not 3 and 0"), "{err}");
        let err = locate(&file, &bytes, "bert.embeddings.word_embeddings.weight", 4, 3).unwrap_err();
        assert!(err.to_string().contains("no tensor bert.embeddings.word_embeddings.weight"), "{err}");
    }
}
