//! Where the rows come from: a directory in the hub layout (`data/{split}-*.parquet`), one with
//! `{split}.jsonl`, or a hub id resolved through the local Hugging Face cache (never downloaded).
//! Parquet is read through the `parquet` crate's record API (the hub's nested
//! `messages: list<struct<content, role>>` column), without arrow.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use parquet::{
    file::reader::{FileReader, SerializedFileReader},
    record::{Field, Row as ParquetRow},
};

use super::{Message, Row, Split, data_err};
use crate::TrainError;

/// Resolves `data_path` to a local directory: an existing directory as is, or a hub id
/// (`owner/name`) through the Hugging Face cache ([`hub_cache_dir`]).
///
/// # Errors
/// [`TrainError::Data`] when it is neither an existing directory nor a cached dataset.
pub fn resolve_data_dir(data_path: &str) -> Result<PathBuf, TrainError> {
    let path = Path::new(data_path);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if is_hub_id(data_path) {
        let cache = hub_cache_dir().ok_or_else(|| {
            data_err(format!("{data_path}: not a directory, and no Hugging Face cache (HF_HOME or HOME unset)"))
        })?;
        return resolve_cached_dataset(&cache, data_path);
    }
    Err(data_err(format!("{data_path}: no such directory")))
}

fn is_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && !p.starts_with('.') && !p.contains(['\\', ':']));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The local Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` (huggingface_hub's order).
pub fn hub_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface/hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// The snapshot directory of dataset `id` in hub cache `cache`:
/// `datasets--{owner}--{name}/snapshots/{refs/main}`.
///
/// # Errors
/// [`TrainError::Data`] naming the path that is missing.
pub fn resolve_cached_dataset(cache: &Path, id: &str) -> Result<PathBuf, TrainError> {
    let repo = cache.join(format!("datasets--{}", id.replace('/', "--")));
    let refs = repo.join("refs/main");
    let rev = std::fs::read_to_string(&refs).map_err(|e| {
        data_err(format!("{id}: not in the local Hugging Face cache ({}: {e}); nothing is downloaded", refs.display()))
    })?;
    let snapshot = repo.join("snapshots").join(rev.trim());
    if !snapshot.is_dir() {
        return Err(data_err(format!("{id}: snapshot {} is missing", snapshot.display())));
    }
    Ok(snapshot)
}

/// The rows of `split` in `dir`: `data/{split}-*.parquet` (all shards, by name) if any, else
/// `{split}.jsonl`.
///
/// # Errors
/// [`TrainError::Data`] for a missing split or a bad file or row; [`TrainError::Io`] for read errors.
pub fn load_rows(dir: &Path, split: Split) -> Result<Vec<Row>, TrainError> {
    let shards = parquet_shards(dir, split)?;
    if !shards.is_empty() {
        let mut rows = Vec::new();
        for shard in &shards {
            rows.extend(read_parquet(shard)?);
        }
        return Ok(rows);
    }
    let jsonl = dir.join(format!("{}.jsonl", split.name()));
    if jsonl.is_file() {
        return read_jsonl(&jsonl);
    }
    Err(data_err(format!(
        "{}: no {name} split (expected data/{name}-*.parquet or {name}.jsonl)",
        dir.display(),
        name = split.name()
    )))
}

fn parquet_shards(dir: &Path, split: Split) -> Result<Vec<PathBuf>, TrainError> {
    let data = dir.join("data");
    if !data.is_dir() {
        return Ok(Vec::new());
    }
    let prefix = format!("{}-", split.name());
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(&data).map_err(|e| TrainError::io(&data, e))? {
        let entry = entry.map_err(|e| TrainError::io(&data, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".parquet") {
            shards.push(entry.path());
        }
    }
    shards.sort();
    Ok(shards)
}

/// Reads rows from a `.jsonl` file (one JSON object per line; blank lines skipped).
///
/// # Errors
/// [`TrainError::Data`] naming the file and line of a row that does not parse.
pub fn read_jsonl(path: &Path) -> Result<Vec<Row>, TrainError> {
    let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(&line)
            .map_err(|e| data_err(format!("{} line {}: bad row: {e}", path.display(), i + 1)))?;
        rows.push(row);
    }
    Ok(rows)
}

/// Reads rows from a no_robots parquet shard (columns `prompt`, `prompt_id`,
/// `messages: list<struct<content, role>>`, `category`).
///
/// # Errors
/// [`TrainError::Data`] naming the file and row of anything that does not fit the schema.
pub fn read_parquet(path: &Path) -> Result<Vec<Row>, TrainError> {
    let bad = |e: parquet::errors::ParquetError| data_err(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let mut rows = Vec::new();
    for (i, record) in reader.get_row_iter(None).map_err(bad)?.enumerate() {
        let record = record.map_err(bad)?;
        let row = parquet_row(&record).map_err(|m| data_err(format!("{} row {i}: {m}", path.display())))?;
        rows.push(row);
    }
    Ok(rows)
}

fn parquet_row(record: &ParquetRow) -> Result<Row, String> {
    let mut row =
        Row { prompt: String::new(), prompt_id: String::new(), messages: Vec::new(), category: String::new() };
    let mut saw_messages = false;
    for (name, field) in record.get_column_iter() {
        match name.as_str() {
            "prompt" => row.prompt = opt_str(field, name)?,
            "prompt_id" => row.prompt_id = opt_str(field, name)?,
            "category" => row.category = opt_str(field, name)?,
            "messages" => {
                saw_messages = true;
                let Field::ListInternal(list) = field else {
                    return Err(format!("messages is {}, not a list", field_kind(field)));
                };
                for (j, element) in list.elements().iter().enumerate() {
                    let Field::Group(group) = element else {
                        return Err(format!("messages[{j}] is {}, not a struct", field_kind(element)));
                    };
                    let (mut role, mut content) = (None, None);
                    for (key, value) in group.get_column_iter() {
                        match (key.as_str(), value) {
                            ("role", Field::Str(s)) => role = Some(s.clone()),
                            ("content", Field::Str(s)) => content = Some(s.clone()),
                            _ => {}
                        }
                    }
                    match (role, content) {
                        (Some(role), Some(content)) => row.messages.push(Message { role, content }),
                        _ => return Err(format!("messages[{j}] lacks a string role or content")),
                    }
                }
            }
            _ => {}
        }
    }
    if !saw_messages {
        return Err("no messages column".into());
    }
    Ok(row)
}

fn opt_str(field: &Field, name: &str) -> Result<String, String> {
    match field {
        Field::Str(s) => Ok(s.clone()),
        Field::Null => Ok(String::new()),
        other => Err(format!("{name} is {}, not a string", field_kind(other))),
    }
}

fn field_kind(field: &Field) -> &'static str {
    match field {
        Field::Null => "null",
        Field::Str(_) => "a string",
        Field::Group(_) => "a struct",
        Field::ListInternal(_) => "a list",
        Field::MapInternal(_) => "a map",
        _ => "a scalar",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_cache_resolution() -> anyhow::Result<()> {
        assert!(is_hub_id("HuggingFaceH4/no_robots"));
        assert!(!is_hub_id("no_robots"));
        assert!(!is_hub_id("./a/b"));
        assert!(!is_hub_id("/abs/path"));
        assert!(!is_hub_id("a/b/c"));

        let cache = tempfile::tempdir()?;
        let repo = cache.path().join("datasets--HuggingFaceH4--no_robots");
        std::fs::create_dir_all(repo.join("refs"))?;
        std::fs::create_dir_all(repo.join("snapshots/abc123/data"))?;
        std::fs::write(repo.join("refs/main"), "abc123\n")?;
        let snap = resolve_cached_dataset(cache.path(), "HuggingFaceH4/no_robots")?;
        assert_eq!(snap, repo.join("snapshots/abc123"));
        let err = resolve_cached_dataset(cache.path(), "other/set").expect_err("not cached");
        assert!(err.to_string().contains("not in the local Hugging Face cache"), "{err}");
        let err = load_rows(&snap, Split::Train).expect_err("empty snapshot");
        assert!(err.to_string().contains("no train split"), "{err}");
        Ok(())
    }

    #[test]
    fn bad_jsonl_rows_name_file_and_line() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("train.jsonl");
        std::fs::write(&path, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n\n{\"messages\": 3}\n")?;
        let err = read_jsonl(&path).expect_err("bad row");
        let msg = err.to_string();
        assert!(msg.contains("train.jsonl line 3"), "{msg}");
        Ok(())
    }
}
