//! Filter: a job's `include` / `exclude` patterns, compiled once, answering
//! "is this path part of the backup?" for full walks and single watch events
//! with the same rules.
//!
//! Patterns are gitignore lines (the `ignore` crate's `GitignoreBuilder`),
//! matched against paths relative to the job's source:
//! - `*.tmp` matches at any depth, `/build` only at the top, `cache/` only
//!   directories, `logs/**` everything under `logs`, `!keep.tmp` re-includes.
//! - **exclude**: a path is excluded when it, or any directory above it, is
//!   excluded; as in git, a `!` pattern cannot bring back a file whose parent
//!   directory is excluded (the walk never enters that directory, and single
//!   paths are judged the same way, top down).
//! - **include**: when the list is empty everything is included. Otherwise a
//!   *file* is included only if it, or a directory above it, matches an
//!   include pattern (the most specific match wins, so `!` works here too).
//!   Directories are always descended unless excluded, so `*.pdf` finds PDFs
//!   at any depth.
//!
//! What it does not do: no `.gitignore` files, no hidden-file rules, and no
//! SharePoint name rules (a name SharePoint refuses is the uploader's business,
//! reported per file; the filter holds only what the administrator wrote).
//! Matching is case-sensitive, as on the local file system.

use std::path::{Component, Path, PathBuf};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// A pattern that is not valid gitignore syntax. Config checking calls
/// [`Filter::new`] so these are reported before any job runs.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("invalid {list} pattern {pattern:?}: {source}")]
    Pattern {
        /// "include" or "exclude", so the message points at the right key.
        list: &'static str,
        pattern: String,
        #[source]
        source: ignore::Error,
    },
}

/// What the filter says about one path. More than a bool so `scan --json`
/// and logs can tell "excluded" from "not included".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Part of the backup.
    Included,
    /// Matched by an exclude pattern (itself or a parent directory).
    Excluded,
    /// A file that matches no include pattern (only when includes are given).
    NotIncluded,
}

impl Verdict {
    /// True when the path is part of the backup.
    pub fn is_included(self) -> bool {
        self == Verdict::Included
    }
}

/// Compiled include/exclude patterns of one job.
#[derive(Debug, Clone)]
pub struct Filter {
    /// `None` when no include patterns were given (everything is included).
    include: Option<Gitignore>,
    exclude: Gitignore,
}

impl Filter {
    /// Compiles the patterns; the first invalid one is an error naming it.
    /// Blank lines and `#` comments are ignored, as in a `.gitignore`.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, FilterError> {
        let include = if include.is_empty() {
            None
        } else {
            Some(build("include", include)?)
        };
        Ok(Filter {
            include,
            exclude: build("exclude", exclude)?,
        })
    }

    /// A filter that includes everything.
    pub fn everything() -> Filter {
        Filter {
            include: None,
            exclude: Gitignore::empty(),
        }
    }

    /// The verdict for one relative path, judged on its own, for watch events:
    /// every parent directory is checked against the exclude patterns top
    /// down, exactly as a walk would have met them.
    pub fn matches(&self, rel_path: &Path, is_dir: bool) -> Verdict {
        // Only normal components: a leading `/` or `./` is not part of the
        // relative path (and an absolute path must not reach the matcher,
        // which asserts paths are relative).
        let rel: PathBuf = rel_path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let Some(parent) = rel.parent() else {
            // The source itself: always part of the job.
            return Verdict::Included;
        };
        let mut ancestor = PathBuf::new();
        for c in parent.components() {
            ancestor.push(c);
            if self.exclude.matched(&ancestor, true).is_ignore() {
                return Verdict::Excluded;
            }
        }
        self.matches_here(&rel, is_dir)
    }

    /// The verdict for a path whose parent directories are already known to
    /// be included (a walk that does not descend into excluded directories).
    /// Cheaper than [`Filter::matches`]: only the path itself is matched
    /// against the exclude patterns.
    pub fn matches_here(&self, rel_path: &Path, is_dir: bool) -> Verdict {
        let rel_path = rel_path.strip_prefix("/").unwrap_or(rel_path);
        if self.exclude.matched(rel_path, is_dir).is_ignore() {
            return Verdict::Excluded;
        }
        if is_dir {
            return Verdict::Included;
        }
        match &self.include {
            None => Verdict::Included,
            Some(include) => match include.matched_path_or_any_parents(rel_path, false) {
                Match::Ignore(_) => Verdict::Included,
                Match::Whitelist(_) | Match::None => Verdict::NotIncluded,
            },
        }
    }
}

fn build(list: &'static str, patterns: &[String]) -> Result<Gitignore, FilterError> {
    // Root "." makes the matcher take every path as relative to the source as
    // given: nothing is stripped from the candidate paths.
    let mut builder = GitignoreBuilder::new(".");
    for pattern in patterns {
        builder
            .add_line(None, pattern)
            .map_err(|source| FilterError::Pattern {
                list,
                pattern: pattern.clone(),
                source,
            })?;
    }
    builder.build().map_err(|source| FilterError::Pattern {
        list,
        pattern: patterns.join(", "),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    use Verdict::{Excluded as X, Included as I, NotIncluded as N};

    #[rstest]
    // No patterns: everything.
    #[case(&[], &[], "a.txt", false, I)]
    #[case(&[], &[], "deep/dir/a.txt", false, I)]
    // Unanchored file pattern matches at any depth.
    #[case(&[], &["*.tmp"], "a.tmp", false, X)]
    #[case(&[], &["*.tmp"], "x/y/a.tmp", false, X)]
    #[case(&[], &["*.tmp"], "x/y/a.tmpl", false, I)]
    // Office lock files from the design's example.
    #[case(&[], &["~$*"], "reports/~$budget.xlsx", false, X)]
    // Anchored pattern matches only at the top.
    #[case(&[], &["/build"], "build", true, X)]
    #[case(&[], &["/build"], "build/out.o", false, X)]
    #[case(&[], &["/build"], "src/build", true, I)]
    #[case(&[], &["/build"], "src/build/x", false, I)]
    // Directory-only pattern: not a file of that name, but everything below the dir.
    #[case(&[], &["cache/"], "cache", false, I)]
    #[case(&[], &["cache/"], "cache", true, X)]
    #[case(&[], &["cache/"], "a/cache/b/c.bin", false, X)]
    // `dir/**` excludes the contents.
    #[case(&[], &["logs/**"], "logs/x.log", false, X)]
    #[case(&[], &["logs/**"], "logs/2024/x.log", false, X)]
    // Negation re-includes a file...
    #[case(&[], &["*.tmp", "!keep.tmp"], "keep.tmp", false, I)]
    #[case(&[], &["*.tmp", "!keep.tmp"], "other.tmp", false, X)]
    // ...but not below an excluded directory (git semantics, same as the walk).
    #[case(&[], &["build/", "!build/keep.txt"], "build/keep.txt", false, X)]
    // Includes: files must match; directories are still descended.
    #[case(&["*.pdf"], &[], "a.pdf", false, I)]
    #[case(&["*.pdf"], &[], "x/y/a.pdf", false, I)]
    #[case(&["*.pdf"], &[], "a.txt", false, N)]
    #[case(&["*.pdf"], &[], "x", true, I)]
    // An included directory includes everything under it.
    #[case(&["reports/"], &[], "reports/q1/a.xlsx", false, I)]
    #[case(&["reports/"], &[], "other/a.xlsx", false, N)]
    #[case(&["/reports"], &[], "reports/a.xlsx", false, I)]
    // The most specific include wins.
    #[case(&["reports/", "!*.bak"], &[], "reports/a.bak", false, N)]
    // Exclude beats include.
    #[case(&["*.pdf"], &["drafts/"], "drafts/a.pdf", false, X)]
    #[case(&["*.pdf"], &["secret.pdf"], "x/secret.pdf", false, X)]
    // Comments and blank lines are ignored.
    #[case(&[], &["# a comment", "", "*.o"], "a.o", false, X)]
    #[case(&[], &["# a comment", ""], "# a comment", false, I)]
    // Names SharePoint refuses are NOT the filter's business.
    #[case(&[], &[], "CON.txt", false, I)]
    #[case(&[], &[], "desktop.ini", false, I)]
    // The root itself and a leading ./ are handled.
    #[case(&[], &["*"], "", true, I)]
    #[case(&[], &["*.tmp"], "./a.tmp", false, X)]
    #[case(&["*.pdf"], &["/build"], "/build/a.pdf", false, X)]
    #[case(&["*.pdf"], &[], "/x/a.pdf", false, I)]
    // Hidden files are ordinary files here.
    #[case(&[], &[], ".config/app.ini", false, I)]
    fn verdicts(
        #[case] include: &[&str],
        #[case] exclude: &[&str],
        #[case] path: &str,
        #[case] is_dir: bool,
        #[case] expected: Verdict,
    ) {
        let filter = Filter::new(&strings(include), &strings(exclude)).unwrap();
        assert_eq!(filter.matches(Path::new(path), is_dir), expected, "{path}");
    }

    #[test]
    fn matches_here_trusts_the_parents() {
        let filter = Filter::new(&[], &strings(&["build/"])).unwrap();
        // The walk never asks about children of an excluded directory.
        assert_eq!(filter.matches_here(Path::new("build"), true), X);
        assert_eq!(filter.matches(Path::new("build/a"), false), X);
    }

    #[test]
    fn everything_includes_everything() {
        let f = Filter::everything();
        assert!(f.matches(Path::new("a/b/c"), false).is_included());
    }

    #[test]
    fn invalid_pattern_names_the_list_and_pattern() {
        let err = Filter::new(&[], &strings(&["ok", "a{b"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exclude"), "{msg}");
        assert!(msg.contains("a{b"), "{msg}");
        let err = Filter::new(&strings(&["[z-a]"]), &[]).unwrap_err();
        assert!(err.to_string().contains("include"), "{err}");
    }
}
