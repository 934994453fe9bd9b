//! Names that become storage keys: checked strictly, before they touch anything.
//!
//! A segment is 1..=[`MAX_SEGMENT`] bytes of ASCII letters, digits, `.`, `_` and `-`, not
//! starting with `.` (so `.`, `..` and hidden names are impossible). Percent-decoding
//! happens before this check, so `%2F`, `%00` and `%2e%2e` are caught here too.

use crate::error::ApiError;

/// Longest accepted org, model or file name, in bytes.
pub const MAX_SEGMENT: usize = 128;

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

/// A checked `{org}/{name}/{file}` triple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    /// Organisation.
    pub org: String,
    /// Model name.
    pub name: String,
    /// File name within the model.
    pub file: String,
}

impl ModelFile {
    /// Checks all three segments.
    pub fn new(org: String, name: String, file: String) -> Result<Self, ApiError> {
        check_segment("org", &org)?;
        check_segment("model name", &name)?;
        check_segment("file name", &file)?;
        Ok(ModelFile { org, name, file })
    }

    /// `org/name/file`, for messages and keys.
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
}
