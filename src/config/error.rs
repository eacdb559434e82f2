//! Why a configuration file was refused, and the helpers that build those errors: the parser's
//! report without the file's text, and a line for a rule that spans keys.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config_shape::{line_of, Step};

/// Why a configuration file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Carries the parser's line/column report.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot read private_key_file {path}")]
    KeyFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's content is never shown: it is meant to be a secret.
    #[error("private_key_file {path} does not hold a 44-character base64 Ed25519 key (as `roamtun genkey` prints it)")]
    KeyFileInvalid { path: PathBuf },
    #[error(
        "private_key_file {path} is accessible by other users (mode {mode:04o}); it must be readable by its owner \
         only: chmod 600 {path}"
    )]
    KeyFileExposed { path: PathBuf, mode: u32 },
    #[error(
        "config file {path} holds private_key and is accessible by other users (mode {mode:04o}); make it readable \
         by its owner only (chmod 600 {path}) or move the key to a private_key_file"
    )]
    ConfigExposed { path: PathBuf, mode: u32 },
}

/// The parser's message with its line and column, but without the excerpt of the file that the
/// parser would show: that line may hold the private key.
pub(super) fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let place = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        });
        ConfigError::Parse { path: path.into(), message: format!("{}{}", place.unwrap_or_default(), e.message()) }
    })
}

pub(super) fn invalid(path: &Path, message: String) -> ConfigError {
    ConfigError::Invalid { path: path.into(), message }
}

/// [`invalid`] for a rule that spans keys, pointing at the line of the key at `key` in `text`.
pub(super) fn invalid_at(path: &Path, text: &str, key: &[Step], message: String) -> ConfigError {
    match line_of(text, key) {
        Some(line) => invalid(path, format!("line {line}: {message}")),
        None => invalid(path, message),
    }
}

/// A parse error, or the plainer message `mistake` finds for tables written the wrong way (when it
/// explains this error, not another one earlier in the file).
pub(super) fn or_mistake(
    path: &Path,
    text: &str,
    err: ConfigError,
    mistake: fn(&str, &str) -> Option<String>,
) -> ConfigError {
    let ConfigError::Parse { message: said, .. } = &err else { return err };
    match mistake(text, said) {
        Some(message) => ConfigError::Parse { path: path.into(), message },
        None => err,
    }
}
