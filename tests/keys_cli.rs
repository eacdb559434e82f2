//! `roamtun genkey` and the daemons' key checks, as a user meets them on the command line.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

const ROAMTUN: &str = env!("CARGO_BIN_EXE_roamtun");

/// Runs `roamtun genkey > path`, `path` already existing with `mode`; returns its stderr.
fn genkey_into(path: &Path, mode: u32) -> String {
    std::fs::write(path, "").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let out = Command::new(ROAMTUN)
        .arg("genkey")
        .stdout(std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = std::fs::read_to_string(path).unwrap();
    assert_eq!(key.trim_end().len(), 44, "{key:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn genkey_warns_when_others_can_read_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.key");
    let err = genkey_into(&path, 0o644);
    assert!(err.contains("Warning: writing to world accessible file."), "{err}");
    assert!(err.contains("umask 077") && err.contains(&format!("chmod 600 {}", path.display())), "{err}");
    let err = genkey_into(&path, 0o640);
    assert!(err.contains("Warning: writing to group accessible file."), "{err}");
    assert_eq!(genkey_into(&path, 0o600), "");
}

#[test]
fn genkey_into_a_pipe_says_nothing() {
    let out = Command::new(ROAMTUN).arg("genkey").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end().len(), 44);
}

fn pubkey(key: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new(ROAMTUN).arg("pubkey").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap().trim().to_string()
}

/// `roamtun server --check` on a config whose key is in `server.key` with `mode`.
fn check_with_key_mode(mode: u32) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("server.key");
    genkey_into(&key_path, 0o600);
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(mode)).unwrap();
    let client = String::from_utf8(Command::new(ROAMTUN).arg("genkey").output().unwrap().stdout).unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "private_key_file = \"server.key\"\nlisten = \"198.18.1.1:7700\"\nvirtual_ips = [\"100.64.0.1\"]\n\
             client_prefixes = [\"100.64.0.0/10\"]\n[[peer]]\nname = \"laptop\"\npublic_key = \"{}\"\n\
             virtual_ips = [\"100.64.0.2\"]\n",
            pubkey(&client)
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(ROAMTUN).args(["server", "--check", "-c"]).arg(&config).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap().replace(&dir.path().display().to_string(), "DIR");
    (out.status.code().unwrap(), err)
}

#[test]
fn check_refuses_a_key_file_others_can_read_and_says_how_to_fix_it() {
    assert_eq!(check_with_key_mode(0o600), (0, String::new()));
    let (code, err) = check_with_key_mode(0o644);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "roamtun: private_key_file DIR/server.key is accessible by other users (mode 0644); it must be readable by \
         its owner only: chmod 600 DIR/server.key\n"
    );
}

#[test]
fn check_does_not_echo_a_malformed_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let almost = "9d61b19deffd5a60ba844af492ec2cc44449c5697b3=";
    std::fs::write(&config, format!("private_key = \"{almost}\"\nlisten = \"198.18.1.1:7700\"\n")).unwrap();
    let out = Command::new(ROAMTUN).args(["client", "--check", "-c"]).arg(&config).output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("line 1") && err.contains("private_key is not a 44-character base64 Ed25519 key"), "{err}");
    assert!(!err.contains(almost) && !err.contains("9d61b1"), "{err}");
}
