//! Choosing tensors: exact names, globs, exclusions and ranges of layer indices.

use globset::{Glob, GlobMatcher};

use crate::error::{Error, Result};

/// One include or exclude pattern: kept with its text for messages.
#[derive(Debug, Clone)]
struct Pattern {
    text: String,
    /// `None` for an exact name (no glob metacharacters), which must exist.
    matcher: Option<GlobMatcher>,
}

impl Pattern {
    fn new(text: &str) -> Result<Pattern> {
        let literal = !text.contains(['*', '?', '[', ']', '{', '}']);
        // `literal_separator` off: `encoder.layer.0.*` matches across dots, as people expect.
        let matcher = if literal {
            None
        } else {
            Some(
                Glob::new(text)
                    .map_err(|e| Error::Filter(format!("bad pattern {text:?}: {e}")))?
                    .compile_matcher(),
            )
        };
        Ok(Pattern {
            text: text.to_string(),
            matcher,
        })
    }

    fn is_match(&self, name: &str) -> bool {
        match &self.matcher {
            None => self.text == name,
            Some(m) => m.is_match(name),
        }
    }
}

/// Which tensors to fetch. The default selects every tensor.
///
/// A tensor is selected when it matches an include pattern (or there are none), matches
/// no exclude pattern, and, if a layer range is set, has a layer index inside it.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
    layers: Option<(u64, u64)>,
}

impl Filter {
    /// Selects every tensor.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Selects exactly these tensors (names or globs).
    pub fn names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<Filter> {
        let mut f = Filter::default();
        for n in names {
            f = f.include(n.as_ref())?;
        }
        Ok(f)
    }

    /// Selects exactly the tensors named, taking every name literally (no globbing).
    pub fn exact<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Filter {
        let mut f = Filter::default();
        for n in names {
            f.include.push(Pattern {
                text: n.as_ref().to_string(),
                matcher: None,
            });
        }
        f
    }

    /// Adds an include pattern: an exact name, or a glob (`encoder.layer.0.*`).
    pub fn include(mut self, pattern: &str) -> Result<Filter> {
        self.include.push(Pattern::new(pattern)?);
        Ok(self)
    }

    /// Adds an exclude pattern (name or glob).
    pub fn exclude(mut self, pattern: &str) -> Result<Filter> {
        self.exclude.push(Pattern::new(pattern)?);
        Ok(self)
    }

    /// Keeps only tensors whose layer index (see [`layer_index`]) is in `first..=last`.
    pub fn layers(mut self, first: u64, last: u64) -> Result<Filter> {
        if first > last {
            return Err(Error::Filter(format!(
                "layer range {first}-{last} runs backwards"
            )));
        }
        self.layers = Some((first, last));
        Ok(self)
    }

    /// Parses `A-B` (or a single `A`) as a layer range, as `--layers` takes it.
    pub fn parse_layers(spec: &str) -> Result<(u64, u64)> {
        let bad = || Error::Filter(format!("bad layer range {spec:?}: use A-B, e.g. 12-23"));
        let (a, b) = match spec.split_once('-') {
            Some((a, b)) => (a, b),
            None => (spec, spec),
        };
        let a = a.trim().parse::<u64>().map_err(|_| bad())?;
        let b = b.trim().parse::<u64>().map_err(|_| bad())?;
        if a > b {
            return Err(bad());
        }
        Ok((a, b))
    }

    /// Whether this filter selects everything (so a download is the whole file).
    pub fn is_all(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty() && self.layers.is_none()
    }

    /// Whether the tensor `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        if !self.include.is_empty() && !self.include.iter().any(|p| p.is_match(name)) {
            return false;
        }
        if self.exclude.iter().any(|p| p.is_match(name)) {
            return false;
        }
        match self.layers {
            None => true,
            Some((a, b)) => layer_index(name).is_some_and(|i| (a..=b).contains(&i)),
        }
    }

    /// Checks the filter against the file's tensor names: an exact name that is not there
    /// is [`Error::UnknownTensor`], a glob that matches nothing and a filter that selects
    /// nothing are [`Error::Filter`]. A typo should not silently give an empty file.
    pub fn check<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) -> Result<()> {
        for p in &self.include {
            if !names.clone().any(|n| p.is_match(n)) {
                return Err(if p.matcher.is_none() {
                    Error::UnknownTensor(p.text.clone())
                } else {
                    Error::Filter(format!("no tensor matches {:?}", p.text))
                });
            }
        }
        if !names.clone().any(|n| self.matches(n)) {
            return Err(Error::Filter("the filter selects no tensor".into()));
        }
        Ok(())
    }
}

/// The layer index of a tensor name: its first dot-separated component that is a plain
/// number (`encoder.layer.12.attention.self.query.weight` → 12, `model.layers.3.mlp` → 3).
/// Names without one (embeddings, final norms) have none and are left out by a layer range.
pub fn layer_index(name: &str) -> Option<u64> {
    name.split('.')
        .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 5] = [
        "embeddings.word_embeddings.weight",
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.1.output.dense.bias",
        "encoder.layer.11.output.dense.bias",
        "pooler.dense.weight",
    ];

    fn chosen(f: &Filter) -> Vec<&'static str> {
        NAMES.into_iter().filter(|n| f.matches(n)).collect()
    }

    #[test]
    fn globs_names_excludes_and_layers() {
        assert_eq!(chosen(&Filter::all()).len(), 5);
        let f = Filter::names(["encoder.layer.1*"]).unwrap();
        assert_eq!(chosen(&f), [NAMES[2], NAMES[3]]);
        let f = Filter::names(["pooler.dense.weight"]).unwrap();
        assert_eq!(chosen(&f), [NAMES[4]]);
        let f = Filter::all().exclude("encoder.*").unwrap();
        assert_eq!(chosen(&f), [NAMES[0], NAMES[4]]);
        let f = Filter::all().layers(1, 11).unwrap();
        assert_eq!(chosen(&f), [NAMES[2], NAMES[3]]);
        assert_eq!(Filter::parse_layers("12-23").unwrap(), (12, 23));
        assert_eq!(Filter::parse_layers("7").unwrap(), (7, 7));
        assert!(Filter::parse_layers("3-1").is_err());
        assert!(Filter::parse_layers("a-b").is_err());
    }

    #[test]
    fn check_names_what_is_missing() {
        let f = Filter::names(["nope.weight"]).unwrap();
        assert!(
            matches!(f.check(NAMES.into_iter()), Err(Error::UnknownTensor(n)) if n == "nope.weight")
        );
        let f = Filter::names(["nope.*"]).unwrap();
        assert!(matches!(f.check(NAMES.into_iter()), Err(Error::Filter(_))));
        let f = Filter::all().layers(40, 50).unwrap();
        assert!(matches!(f.check(NAMES.into_iter()), Err(Error::Filter(_))));
        assert!(Filter::all().check(NAMES.into_iter()).is_ok());
    }
}
