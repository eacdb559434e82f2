//! What `roamtun client|server --check` tells a user about their file: the mistakes of shape named as
//! such, the line of an error that spans keys, and on success what was checked.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use roamtun::config::{ClientConfig, ServerConfig};
use roamtun::keys::PrivateKey;

const ROAMTUN: &str = env!("CARGO_BIN_EXE_roamtun");

fn key() -> String {
    PrivateKey::generate().unwrap().to_base64().as_str().to_string()
}

fn public() -> String {
    PrivateKey::generate().unwrap().public_key().to_base64()
}

/// A valid server file: line 5 is the first `[[peer]]`, line 8 its virtual_ips.
fn server_text() -> String {
    format!(
        "private_key = \"{}\"\nlisten = \"198.18.1.1:7700\"\nvirtual_ips = [\"100.64.0.1\"]\n\
         client_prefixes = [\"100.64.0.0/10\"]\n[[peer]]\nname = \"laptop\"\npublic_key = \"{}\"\n\
         virtual_ips = [\"100.64.0.2\"]\n",
        key(),
        public()
    )
}

fn client_text() -> String {
    format!(
        "private_key = \"{}\"\nvirtual_ips = [\"100.64.0.2\"]\nroutes = [\"100.64.0.0/10\"]\n\
         uplinks = [\"eth0\", \"wlan0\"]\n[server]\naddress = \"198.18.1.1:7700\"\npublic_key = \"{}\"\n",
        key(),
        public()
    )
}

fn server_err(text: &str) -> String {
    ServerConfig::from_toml(Path::new("s.toml"), text).unwrap_err().to_string()
}

fn client_err(text: &str) -> String {
    ClientConfig::from_toml(Path::new("c.toml"), text).unwrap_err().to_string()
}

#[test]
fn a_single_bracket_peer_says_to_double_the_brackets() {
    let err = server_err(&server_text().replace("[[peer]]", "[peer]"));
    assert_eq!(
        err,
        "invalid config file s.toml: line 5: [peer] must be written [[peer]] (double brackets): each client is one \
         [[peer]] table, repeated per client"
    );
}

#[test]
fn a_missing_server_table_is_named() {
    let text = client_text();
    let without: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
    let err = client_err(&without);
    assert!(
        err.starts_with("invalid config file c.toml: no [server] table: add one with the server's address"),
        "{err}"
    );
    let err = client_err(&text.replace("[server]", "[[server]]"));
    assert!(err.contains("line 5: [[server]] must be written [server]"), "{err}");
}

#[test]
fn errors_that_span_keys_point_at_a_line() {
    // A second peer with the first one's virtual IP: the line of that IP (line 12).
    let second = format!("[[peer]]\nname = \"phone\"\npublic_key = \"{}\"\nvirtual_ips = [\"100.64.0.2\"]\n", public());
    let err = server_err(&format!("{}{second}", server_text()));
    assert_eq!(
        err,
        "invalid config file s.toml: line 12: virtual IP 100.64.0.2 of peer \"phone\" is already given to laptop"
    );
    // A virtual IP outside client_prefixes: the peer's virtual_ips line.
    let err = server_err(&server_text().replace("virtual_ips = [\"100.64.0.2\"]", "virtual_ips = [\"198.18.9.9\"]"));
    assert!(err.starts_with("invalid config file s.toml: line 8: virtual IP 198.18.9.9"), "{err}");
    // The same key on two peers: the second one's public_key line.
    let pk = public();
    let text = format!(
        "{}[[peer]]\nname = \"phone\"\npublic_key = \"{pk}\"\nvirtual_ips = [\"100.64.0.3\"]\n[[peer]]\nname = \
         \"tablet\"\npublic_key = \"{pk}\"\nvirtual_ips = [\"100.64.0.4\"]\n",
        server_text()
    );
    let err = server_err(&text);
    assert!(err.contains("line 15: peer \"tablet\" has the same public key as peer \"phone\""), "{err}");
    // A listen address given twice: the line of the second (line 3 of a list over lines 2-3).
    let err = server_err(
        &server_text()
            .replace("listen = \"198.18.1.1:7700\"", "listen = [\"198.18.1.1:7700\",\n  \"198.18.1.1:7700\"]"),
    );
    assert!(err.contains("line 3: listen: 198.18.1.1:7700 is named twice"), "{err}");
    // Client: an uplink named twice, the TUN as an uplink, a server address inside an unbound route.
    let err = client_err(&client_text().replace("[\"eth0\", \"wlan0\"]", "[\"eth0\",\n \"eth0\"]"));
    assert!(err.contains("line 5: uplinks: \"eth0\" is named twice"), "{err}");
    let err = client_err(&client_text().replace("[\"eth0\", \"wlan0\"]", "[\"eth0\", \"roam0\"]"));
    assert!(err.contains("line 4: uplinks: \"roam0\" is this client's own TUN"), "{err}");
    let err = client_err(
        &client_text()
            .replace("uplinks = [\"eth0\", \"wlan0\"]\n", "")
            .replace("routes = [\"100.64.0.0/10\"]", "routes = [\"100.64.0.0/10\",\n  \"198.18.0.0/16\"]"),
    );
    assert!(err.contains("line 4: the server address 198.18.1.1 lies inside the routed prefix 198.18.0.0/16"), "{err}");
}

#[test]
fn check_prints_what_it_checked_and_warns_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.toml");
    std::fs::write(&path, client_text().replace("[\"eth0\", \"wlan0\"]", "[\"lo\", \"no-such-link0\"]")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(ROAMTUN).args(["client", "--check", "-c"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("{}: valid", path.display()));
    assert!(lines.contains(&"  routes into the tunnel: 100.64.0.0/10"), "{stdout}");
    assert!(lines.iter().any(|l| l.starts_with("  server: 198.18.1.1:7700, public key ")), "{stdout}");
    assert!(lines.iter().any(|l| l.starts_with("  uplink lo: ") && l.ends_with("present")), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("roamtun: warning: uplink \"no-such-link0\" does not exist on this host"), "{stderr}");
}
