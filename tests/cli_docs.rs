//! `roamtun completion SHELL` and `roamtun man`, as a user installs and uses them: the bash script
//! is loaded into a real bash and asked to complete, the man pages are read back.

use std::process::Command;

const ROAMTUN: &str = env!("CARGO_BIN_EXE_roamtun");
const SUBCOMMANDS: [&str; 10] =
    ["client", "server", "status", "switch", "pin", "unpin", "genkey", "pubkey", "completion", "man"];

fn roamtun(args: &[&str]) -> String {
    let out = Command::new(ROAMTUN).args(args).output().unwrap();
    assert!(out.status.success(), "roamtun {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// What bash offers after typing `words` and TAB, with the generated script loaded.
fn bash_completes(script: &str, words: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roamtun.bash");
    std::fs::write(&path, script).unwrap();
    let words_q: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let program = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={cword}; _roamtun roamtun '{}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display(),
        words_q.join(" "),
        words[cword]
    );
    let out = Command::new("bash").args(["--norc", "--noprofile", "-c", &program]).output().expect("run bash");
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_the_subcommands_and_their_options() {
    let script = roamtun(&["completion", "bash"]);
    let offered = bash_completes(&script, &["roamtun", ""]);
    for sub in SUBCOMMANDS {
        assert!(offered.iter().any(|w| w == sub), "`roamtun <TAB>` does not offer {sub}: {offered:?}");
    }
    let offered = bash_completes(&script, &["roamtun", "server", "--"]);
    assert!(offered.iter().any(|w| w == "--check") && offered.iter().any(|w| w == "--config"), "{offered:?}");
    let offered = bash_completes(&script, &["roamtun", "completion", ""]);
    assert!(offered.iter().any(|w| w == "zsh") && offered.iter().any(|w| w == "fish"), "{offered:?}");
    // The plural is accepted too.
    assert_eq!(roamtun(&["completions", "bash"]), script);
}

#[test]
fn the_man_page_lists_every_subcommand_and_each_has_its_own() {
    let page = roamtun(&["man"]);
    assert!(page.contains(".TH roamtun 1"), "{page}");
    for sub in SUBCOMMANDS {
        assert!(page.contains(&format!("roamtun\\-{sub}(1)")), "roamtun(1) does not list {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    roamtun(&["man", "--dir", dir.path().to_str().unwrap()]);
    let server = std::fs::read_to_string(dir.path().join("roamtun-server.1")).unwrap();
    assert!(server.contains(".TH roamtun-server 1") && server.contains("/etc/roamtun/server.toml"), "{server}");
    for sub in SUBCOMMANDS {
        assert!(dir.path().join(format!("roamtun-{sub}.1")).exists(), "no roamtun-{sub}.1");
    }
    // As `man` shows it, where man-db is installed.
    if let Ok(out) = Command::new("man").arg("-l").arg(dir.path().join("roamtun.1")).env("MANPAGER", "cat").output() {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("SUBCOMMANDS") && text.contains("roamtun-client(1)"), "{text}");
        }
    }
}
