//! The daemon's private key: inline (`private_key`) or in a file of its own (`private_key_file`); a
//! file that holds it must be private to its owner, else the daemon refuses to start (like ssh with
//! its keys). A malformed key is never repeated in a message.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserializer;
use zeroize::Zeroizing;

use super::error::{invalid, ConfigError};
use crate::keys::PrivateKey;

/// What a malformed `private_key` is told, whatever was wrong with it: the value itself is never
/// repeated (it may be a real key with a typo).
const BAD_PRIVATE_KEY: &str = "private_key is not a 44-character base64 Ed25519 key (as `roamtun genkey` prints it)";

/// Permission bits for the group and others: a file holding a secret must have none of them.
const GROUP_OTHER_BITS: u32 = 0o077;

/// An inline `private_key`. The text is wiped once read, and a bad value is reported without it.
pub(super) fn private_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PrivateKey>, D::Error> {
    struct KeyVisitor;
    impl serde::de::Visitor<'_> for KeyVisitor {
        type Value = PrivateKey;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a 44-character base64 Ed25519 key")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PrivateKey, E> {
            PrivateKey::from_base64(s).map_err(|_| E::custom(BAD_PRIVATE_KEY))
        }
        fn visit_string<E: serde::de::Error>(self, s: String) -> Result<PrivateKey, E> {
            self.visit_str(&Zeroizing::new(s))
        }
    }
    d.deserialize_str(KeyVisitor).map(Some)
}

/// A file's text, wiped when dropped, and its permission bits (read from the open file, so they are
/// those of what was read).
fn read_private(path: &Path) -> std::io::Result<(Zeroizing<String>, u32)> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = std::fs::File::open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)?;
    Ok((text, mode))
}

pub(super) fn read(path: &Path) -> Result<(Zeroizing<String>, u32), ConfigError> {
    read_private(path).map_err(|source| ConfigError::Read { path: path.into(), source })
}

/// Reads `private_key_file`: private to its owner, one base64 key (surrounding whitespace is fine).
fn load_key_file(path: &Path) -> Result<PrivateKey, ConfigError> {
    let (text, mode) = read_private(path).map_err(|source| ConfigError::KeyFileRead { path: path.into(), source })?;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(ConfigError::KeyFileExposed { path: path.into(), mode });
    }
    PrivateKey::from_base64(&text).map_err(|_| ConfigError::KeyFileInvalid { path: path.into() })
}

/// The daemon's key from exactly one of `private_key` and `private_key_file`. `mode` is the config
/// file's (`None`: not read from a file, as in tests); an inline key needs a private config file.
pub(super) fn resolve_key(
    path: &Path,
    mode: Option<u32>,
    inline: &mut Option<PrivateKey>,
    file: &mut Option<PathBuf>,
) -> Result<(), ConfigError> {
    match (&inline, &file) {
        (Some(_), Some(_)) => Err(invalid(
            path,
            "both private_key and private_key_file are set: keep one (private_key_file keeps the secret out of \
             the config file)"
                .into(),
        )),
        (None, None) => Err(invalid(
            path,
            "no private key: set private_key_file to a file written by `roamtun genkey` (or private_key to the key \
             itself)"
                .into(),
        )),
        (Some(_), None) => match mode {
            Some(mode) if mode & GROUP_OTHER_BITS != 0 => Err(ConfigError::ConfigExposed { path: path.into(), mode }),
            _ => Ok(()),
        },
        (None, Some(key_path)) => {
            let key_path = match path.parent() {
                Some(dir) if key_path.is_relative() => dir.join(key_path),
                _ => key_path.clone(),
            };
            *inline = Some(load_key_file(&key_path)?);
            *file = Some(key_path);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::server_toml;
    use crate::config::{ClientConfig, ServerConfig};

    /// A file with these contents and exactly this mode (whatever the umask).
    fn file_with_mode(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_key_file_private_to_its_owner_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate().unwrap();
        // As `roamtun genkey > server.key` writes it: one line, with its newline.
        file_with_mode(dir.path(), "server.key", &format!("{}\n", key.to_base64().as_str()), 0o600);
        let text = format!("private_key_file = \"server.key\"\n{}", without_inline_key(&server_toml("")));
        let config = file_with_mode(dir.path(), "server.toml", &text, 0o644);
        let c = ServerConfig::load(&config).unwrap();
        assert_eq!(c.private_key().public_key(), key.public_key());
        // Relative to the config file's directory, not to where the daemon was started.
        assert_eq!(c.private_key_file.as_deref(), Some(dir.path().join("server.key").as_path()));
    }

    /// The inline key line of a generated config.
    fn inline_key(text: &str) -> String {
        let line = text.lines().find(|l| l.starts_with("private_key = ")).unwrap();
        line.trim_start_matches("private_key = ").trim_matches('"').to_string()
    }

    fn without_inline_key(text: &str) -> String {
        text.lines().filter(|l| !l.starts_with("private_key = ")).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_key_file_others_can_read_or_write_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate().unwrap().to_base64();
        for mode in [0o644, 0o640, 0o620, 0o602] {
            let key_path = file_with_mode(dir.path(), "client.key", key.as_str(), mode);
            let text =
                format!("private_key_file = \"{}\"\n{}", key_path.display(), without_inline_key(&server_toml("")));
            let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
            let want = format!(
                "private_key_file {} is accessible by other users (mode {mode:04o}); it must be readable by its \
                 owner only: chmod 600 {}",
                key_path.display(),
                key_path.display()
            );
            assert_eq!(err, want);
        }
    }

    #[test]
    fn an_inline_key_in_a_config_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with_mode(dir.path(), "server.toml", &server_toml(""), 0o644);
        let err = ServerConfig::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "config file {p} holds private_key and is accessible by other users (mode 0644); make it readable by \
                 its owner only (chmod 600 {p}) or move the key to a private_key_file",
                p = path.display()
            )
        );
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        ServerConfig::load(&path).unwrap();
        // Without the key in it, the config file may be readable by all.
        let key = file_with_mode(dir.path(), "server.key", &inline_key(&server_toml("")), 0o400);
        let text = format!("private_key_file = \"{}\"\n{}", key.display(), without_inline_key(&server_toml("")));
        ClientConfig::load(&file_with_mode(dir.path(), "c.toml", &text, 0o644)).unwrap_err();
        ServerConfig::load(&file_with_mode(dir.path(), "s.toml", &text, 0o644)).unwrap();
    }

    #[test]
    fn exactly_one_private_key_source_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let key = file_with_mode(dir.path(), "k", &inline_key(&server_toml("")), 0o600);
        let both = format!("private_key_file = \"{}\"\n{}", key.display(), server_toml(""));
        let err = ServerConfig::from_toml(Path::new("s.toml"), &both).unwrap_err().to_string();
        assert!(err.contains("both private_key and private_key_file are set"), "{err}");
        let neither = without_inline_key(&server_toml(""));
        let err = ServerConfig::from_toml(Path::new("s.toml"), &neither).unwrap_err().to_string();
        assert!(err.contains("no private key: set private_key_file"), "{err}");
        let missing = format!("private_key_file = \"{}/absent.key\"\n{neither}", dir.path().display());
        let err = ServerConfig::from_toml(Path::new("s.toml"), &missing).unwrap_err();
        assert!(err.to_string().starts_with("cannot read private_key_file "), "{err}");
        let garbage = file_with_mode(dir.path(), "bad.key", "c2VjcmV0LWJ1dC1zaG9ydA==\n", 0o600);
        let text = format!("private_key_file = \"{}\"\n{neither}", garbage.display());
        let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("does not hold a 44-character base64 Ed25519 key"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }

    #[test]
    fn a_malformed_private_key_is_never_echoed() {
        let base = server_toml("");
        let good = inline_key(&base);
        // A real key with one character lost, one with a typo, and things that are not keys at all.
        let mut typo = good.clone();
        typo.replace_range(3..4, "!");
        for bad in [&good[1..], typo.as_str(), "hunter2hunter2", "", "c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IHNlY3JldA=="]
        {
            let text = base.replace(&good, bad);
            let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
            assert!(err.contains("line 1") && err.contains(BAD_PRIVATE_KEY), "{err}");
            assert!(bad.is_empty() || !err.contains(bad), "the key is echoed: {err}");
        }
        // Nor does a syntax error on its line quote it.
        let text = base.replace(&format!("\"{good}\""), &format!("\"{good}"));
        let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains(&good), "{err}");
        // Nor a misspelt key name.
        let text = base.replace("private_key =", "privat_key =");
        let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("privat_key") && !err.contains(&good), "{err}");
    }
}
