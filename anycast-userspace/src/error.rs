//! Errors as operators read them.

use std::path::PathBuf;

/// An I/O failure: what was being done, on which path, and the system's error (the `Io`
/// variant of every layer's error type).
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct IoError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// `map_err(io_at("reading", &path))`.
pub fn io_at(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> IoError {
    let path = path.to_owned();
    move |source| IoError { what, path, source }
}

/// `a: b: c` for an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
