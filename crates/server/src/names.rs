//! Names that become storage keys: checked strictly, before they touch anything.
//!
//! A segment is 1..=[`MAX_SEGMENT`] bytes of ASCII letters, digits, `.`, `_` and `-`, not
//! starting with `.` (so `.`, `..` and hidden names are impossible). Percent-decoding
//! happens before this check, so `%2e%2e` and `%00` are caught here too.
//!
//! Orgs and model names are one segment. A file is a **path** of 1..=[`MAX_DEPTH`]
//! segments joined by `/` (`config.json`, `onnx/model.onnx`, `1_Pooling/config.json`),
//! at most [`MAX_PATH`] bytes, as Hugging Face repos hold them. A `%2F` in a URL is a `/`
//! like any other, so empty segments (`a//b`), a leading or trailing `/` and dot
//! segments are refused wherever they come from. Two more rules keep every name
//! unambiguous, and apply to paths of two or more segments only (flat names are
//! unchanged):
//! - no segment is [`RESERVED`] (`manifest`, `tensors`): `…/{file}/manifest` and
//!   `…/{file}/tensors/{tensor}` name a file's manifest and tensors;
//! - no folder segment ends in `.json`: the pointer of file `x` is stored as `x.json`,
//!   so a folder `x.json/` would share its key.
//!
//! That a path is both a file and a folder (`a` and `a/b` in one model) is refused at
//! upload time (409, [`crate::storage::Storage::path_conflict`]), since no checkout of a
//! repo could hold both.

use crate::error::ApiError;

/// Longest accepted org, model name or file path segment, in bytes.
pub const MAX_SEGMENT: usize = 128;
/// Most segments in a file path (`a/b/c` has 3).
pub const MAX_DEPTH: usize = 16;
/// Longest file path, in bytes. With the org and model name this keeps every storage key
/// under S3's 1024-byte limit.
pub const MAX_PATH: usize = 512;
/// Segment names a nested file path may not use: they name a file's sub-resources.
pub const RESERVED: [&str; 2] = ["manifest", "tensors"];

/// Checks one path segment; `what` names it in the error.
pub fn check_segment(what: &str, s: &str) -> Result<(), ApiError> {
    if s.is_empty() {
        return Err(ApiError::InvalidName(format!("{what} is empty")));
    }
    if s.len() > MAX_SEGMENT {
        return Err(ApiError::InvalidName(format!(
            "{what} is {} bytes long; the limit is {MAX_SEGMENT}",
            s.len()
        )));
    }
    if s.starts_with('.') {
        return Err(ApiError::InvalidName(format!(
            "{what} must not start with '.'"
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ApiError::InvalidName(format!(
            "{what} contains {c:?}; allowed are ASCII letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// Checks a file path: 1..=[`MAX_DEPTH`] checked segments joined by `/`, at most
/// [`MAX_PATH`] bytes, and for nested paths no [`RESERVED`] segment and no folder ending
/// in `.json` (see the module docs).
pub fn check_file_path(path: &str) -> Result<(), ApiError> {
    if path.len() > MAX_PATH {
        return Err(ApiError::InvalidName(format!(
            "file path is {} bytes long; the limit is {MAX_PATH}",
            path.len()
        )));
    }
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() > MAX_DEPTH {
        return Err(ApiError::InvalidName(format!(
            "file path has {} segments; the limit is {MAX_DEPTH}",
            segments.len()
        )));
    }
    if segments.len() == 1 {
        return check_segment("file name", path);
    }
    for s in &segments {
        check_segment("file path segment", s)?;
        if RESERVED.contains(s) {
            return Err(ApiError::InvalidName(format!(
                "{s:?} is reserved in a nested file path (it names a file's {s})"
            )));
        }
    }
    if let Some(dir) = segments[..segments.len() - 1]
        .iter()
        .find(|s| s.ends_with(".json"))
    {
        return Err(ApiError::InvalidName(format!(
            "folder {dir:?} ends in \".json\", which file pointers use"
        )));
    }
    Ok(())
}

/// What a `GET /v1/models/{org}/{name}/{path…}` names: a file, or a file's manifest or
/// one of its tensors. The split is unambiguous because nested file paths never hold a
/// [`RESERVED`] segment; a flat file may be called `manifest` or `tensors` and is still
/// reachable (`{file}` alone, or the first segment before a sub-resource).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRequest {
    /// The file itself.
    File(String),
    /// `{file}/manifest`.
    Manifest(String),
    /// `{file}/tensors/{tensor}`; the tensor name may itself hold `/`.
    Tensor(String, String),
}

impl FileRequest {
    /// Splits a (percent-decoded) path after `{org}/{name}/`. Names are not checked here.
    pub fn parse(path: &str) -> FileRequest {
        let segments: Vec<&str> = path.split('/').collect();
        // Index 0 is always part of the file: a flat file may be named like a sub-resource.
        if let Some(i) = (1..segments.len()).find(|&i| segments[i] == "tensors") {
            if i + 1 < segments.len() {
                return FileRequest::Tensor(segments[..i].join("/"), segments[i + 1..].join("/"));
            }
        }
        match segments.split_last() {
            Some((&"manifest", dir)) if !dir.is_empty() => FileRequest::Manifest(dir.join("/")),
            _ => FileRequest::File(path.to_string()),
        }
    }
}

/// A checked `{org}/{name}/{file path}` triple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    /// Organisation.
    pub org: String,
    /// Model name.
    pub name: String,
    /// File path within the model (`/`-separated segments, see [`check_file_path`]).
    pub file: String,
}

impl ModelFile {
    /// Checks the org, the model name and the file path.
    pub fn new(org: String, name: String, file: String) -> Result<Self, ApiError> {
        check_segment("org", &org)?;
        check_segment("model name", &name)?;
        check_file_path(&file)?;
        Ok(ModelFile { org, name, file })
    }

    /// `org/name/file`, for messages.
    pub fn display(&self) -> String {
        format!("{}/{}/{}", self.org, self.name, self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_names() {
        for n in [
            "model.safetensors",
            "model-00001-of-00002.safetensors",
            "tokenizer_config.json",
            "a",
            "sentence-transformers",
            "all-MiniLM-L6-v2",
        ] {
            check_segment("x", n).unwrap();
        }
    }

    #[test]
    fn rejects_tricks() {
        let long = "a".repeat(MAX_SEGMENT + 1);
        for n in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a\0b",
            "a b",
            "é",
            "%2e",
            long.as_str(),
        ] {
            assert!(check_segment("x", n).is_err(), "{n:?}");
        }
        check_segment("x", &"a".repeat(MAX_SEGMENT)).unwrap();
    }

    #[test]
    fn nested_paths() {
        for p in [
            "config.json",
            "onnx/model.onnx",
            "1_Pooling/config.json",
            "a/b/c/d.txt",
            "manifest",
            "tensors",
            "x.json",
            "x/y.json",
        ] {
            check_file_path(p).unwrap();
        }
        let deep = vec!["a"; MAX_DEPTH + 1].join("/");
        let long = vec!["a".repeat(100); 6].join("/");
        let seg = format!("a/{}", "b".repeat(MAX_SEGMENT + 1));
        for p in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/./b",
            "a/../b",
            "../a",
            "a/.git/config",
            "a/\0b",
            "a\\b/c",
            "a b/c",
            "a/manifest",
            "a/tensors/b",
            "tensors/b",
            "x.json/y",
            deep.as_str(),
            long.as_str(),
            seg.as_str(),
        ] {
            assert!(check_file_path(p).is_err(), "{p:?}");
        }
        check_file_path(&vec!["a"; MAX_DEPTH].join("/")).unwrap();
    }

    #[test]
    fn requests_split_unambiguously() {
        use FileRequest::*;
        for (p, want) in [
            ("f", File("f".into())),
            ("manifest", File("manifest".into())),
            ("f/manifest", Manifest("f".into())),
            ("a/b.onnx/manifest", Manifest("a/b.onnx".into())),
            ("manifest/manifest", Manifest("manifest".into())),
            ("f/tensors/t", Tensor("f".into(), "t".into())),
            ("a/f/tensors/x/y", Tensor("a/f".into(), "x/y".into())),
            ("tensors/tensors/t", Tensor("tensors".into(), "t".into())),
            ("a/b", File("a/b".into())),
            ("f/tensors", File("f/tensors".into())),
        ] {
            assert_eq!(FileRequest::parse(p), want, "{p}");
        }
    }
}
