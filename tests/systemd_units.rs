//! The service units in dist/systemd/ as systemd reads them: `systemd-analyze verify` on each, with
//! the binary the unit names replaced by the one cargo built (the unit's own path,
//! /usr/local/bin/roamtun, exists only once installed). systemd-analyze reports most mistakes
//! (an unknown key, a bad value) as warnings and still exits 0, so any output fails the check too.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROAMTUN: &str = env!("CARGO_BIN_EXE_roamtun");
const INSTALLED: &str = "/usr/local/bin/roamtun";
const UNITS: [(&str, &str); 2] = [("roamtun-server@.service", "server"), ("roamtun-client@.service", "client")];

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].iter().map(PathBuf::from).find(|p| p.exists())
}

fn unit_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Writes the template `name` with `text` into a fresh directory and verifies its instance `test`;
/// returns what systemd-analyze said (empty: the unit is fine), exit code included.
fn verify(analyze: &Path, name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), text.replace(INSTALLED, ROAMTUN)).unwrap();
    let instance = name.replace("@.", "@test.");
    // --man=no: the man page is not installed where the test runs (`roamtun man` prints it).
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(dir.path().join(&instance))
        .current_dir(dir.path())
        .output()
        .expect("run systemd-analyze");
    let mut said = String::from_utf8_lossy(&out.stderr).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        said.push_str(&format!("\n(exit status {})", out.status));
    }
    said
}

#[test]
fn both_units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    for (name, role) in UNITS {
        let text = unit_text(name);
        // The unit runs the daemon on /etc/roamtun/NAME.toml, as README's Install section says.
        let exec = format!("ExecStart={INSTALLED} {role} -c /etc/roamtun/%i.toml");
        assert!(text.lines().any(|l| l == exec), "{name} has no line {exec:?}");
        assert!(text.lines().any(|l| l == "Type=notify"), "{name} is not Type=notify");
        assert_eq!(verify(&analyze, name, &text), "", "{name}");
    }
}

#[test]
fn a_broken_unit_is_caught() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    let text = unit_text(UNITS[0].0);
    // A misspelt key and a bad value are warnings that systemd-analyze exits 0 on.
    for (good, bad, says) in [
        ("ProtectSystem=strict", "ProtectSystem=strikt", "protect system value"),
        ("Type=notify", "Typ=notify", "Unknown key"),
        (&format!("ExecStart={INSTALLED} "), "ExecStart=/nonexistent/roamtun ", "/nonexistent/roamtun"),
    ] {
        assert!(text.contains(good), "the unit has no {good:?}");
        let said = verify(&analyze, UNITS[0].0, &text.replacen(good, bad, 1));
        assert!(said.contains(says), "{bad:?} not reported: {said:?}");
    }
}
