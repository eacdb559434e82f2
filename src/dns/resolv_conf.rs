//! The resolv.conf backend: the host without systemd-resolved reads its DNS servers from
//! /etc/resolv.conf, so the client replaces that file while it runs.
//!
//! - When /etc/resolv.conf is a symlink (resolvconf, NetworkManager), the file it points to is
//!   the one replaced and put back; the link itself is never touched. Under `ip netns exec` that is
//!   the namespace's own file, bind-mounted over /etc/resolv.conf.
//! - Before the file is written, its content and mode (or that it did not exist) and what will be
//!   written are saved to the state file beside the control socket. A client killed before it could
//!   put the file back leaves that record, and the next start puts the file back from it.
//! - The file is put back only if it still says what the client wrote: one rewritten meanwhile
//!   (a DHCP client, a network manager) holds newer settings than the saved copy, and is left as
//!   it is (logged).
//! - Written as a new file renamed over the old one, so a reader never sees half a file; a file
//!   that cannot be renamed over (a mount point: `ip netns exec`, containers, systemd's
//!   `ReadWritePaths=`) or beside which no new file can be made (a read-only /etc) is rewritten in
//!   place.

use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DnsError;
use crate::control::DnsStatus;

/// What the state file records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    /// The file replaced: /etc/resolv.conf, or the file its symlink points to.
    file: PathBuf,
    /// What it held before; `None`: it did not exist.
    original: Option<Original>,
    /// What the client wrote: the file is put back only while it still says this.
    written: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Original {
    text: String,
    mode: u32,
}

/// /etc/resolv.conf while it holds the tunnel's servers.
#[derive(Debug)]
pub struct Replaced {
    saved: Saved,
    state: PathBuf,
    servers: Vec<IpAddr>,
    restored: bool,
}

impl Replaced {
    /// Saves what `path` holds to `state`, then writes `servers` to it.
    pub fn apply(path: &Path, servers: &[IpAddr], state: PathBuf) -> Result<Self, DnsError> {
        let file = target(path)?;
        let original = match fs::read(&file) {
            Ok(bytes) => {
                let mode = fs::metadata(&file).map_err(|source| DnsError::Read { path: file.clone(), source })?;
                let text = String::from_utf8(bytes).map_err(|_| DnsError::NotText { path: file.clone() })?;
                Some(Original { text, mode: mode.permissions().mode() & 0o7777 })
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(source) => return Err(DnsError::Read { path: file, source }),
        };
        let saved = Saved { written: content(servers, &state), file, original };
        save(&state, &saved).map_err(|source| DnsError::Save { path: state.clone(), source })?;
        // Readable by every user's resolver, whatever the daemon's umask (the units set 077).
        let mode = saved.original.as_ref().map_or(0o644, |o| o.mode);
        if let Err(source) = replace(&saved.file, saved.written.as_bytes(), mode) {
            let _ = fs::remove_file(&state);
            return Err(DnsError::Write { path: saved.file, source });
        }
        tracing::info!(file = %saved.file.display(), servers = ?servers, saved = %state.display(), "dns: resolv.conf written");
        Ok(Replaced { saved, state, servers: servers.to_vec(), restored: false })
    }

    pub fn status(&self) -> DnsStatus {
        DnsStatus {
            backend: "resolv.conf".into(),
            servers: self.servers.clone(),
            file: Some(self.saved.file.clone()),
            domains: Vec::new(),
        }
    }

    /// Puts the saved file back (if it still says what was written) and removes the record.
    pub fn restore(mut self) {
        self.restored = true;
        log_failure(put_back(&self.saved, &self.state), &self.state);
    }
}

impl Drop for Replaced {
    /// A panic that unwinds past the client's run still puts the file back.
    fn drop(&mut self) {
        if !self.restored {
            log_failure(put_back(&self.saved, &self.state), &self.state);
        }
    }
}

fn log_failure(done: Result<(), DnsError>, state: &Path) {
    if let Err(err) = done {
        let error = format!("{:#}", anyhow::Error::new(err));
        tracing::error!(%error, state = %state.display(), "dns: the host's resolv.conf is not back; the next start tries again");
    }
}

/// Puts back what a client killed while its DNS was applied left in `state`, if there is such a
/// record. Called at every start, also by a client whose configuration no longer sets `dns`. An
/// error leaves the record where it is (a new one over it would lose the host's own file).
pub fn recover(state: &Path) -> Result<(), DnsError> {
    let text = match fs::read_to_string(state) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(DnsError::Read { path: state.into(), source }),
    };
    match serde_json::from_str::<Saved>(&text) {
        Ok(saved) => {
            tracing::info!(file = %saved.file.display(), state = %state.display(), "dns: a previous client was killed with its DNS applied; putting the file back");
            put_back(&saved, state)
        }
        Err(err) => {
            // Not a record this code wrote: nothing in it can be trusted to write /etc with.
            tracing::warn!(state = %state.display(), %err, "dns: the DNS settings a previous client saved are unreadable; ignored");
            Ok(())
        }
    }
}

/// Where writing `path` must go: the file itself, or where its symlink points.
fn target(path: &Path) -> Result<PathBuf, DnsError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(path)
            .map_err(|_| DnsError::DanglingLink { link: path.into(), target: fs::read_link(path).unwrap_or_default() }),
        Ok(_) => Ok(path.into()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(path.into()),
        Err(source) => Err(DnsError::Read { path: path.into(), source }),
    }
}

/// What the client writes: a note for whoever reads the file, then the servers.
fn content(servers: &[IpAddr], state: &Path) -> String {
    let mut text = format!(
        "# Written by the roamtun client while its tunnel is up (dns in its configuration).\n\
         # The file it replaced is saved in {} and put back when the client stops.\n",
        state.display()
    );
    for ip in servers {
        text.push_str(&format!("nameserver {ip}\n"));
    }
    text
}

/// The file back as `saved` found it, if it still holds what the client wrote; then the record
/// removed. On an error the record stays, for the next start to try again.
fn put_back(saved: &Saved, state: &Path) -> Result<(), DnsError> {
    let file = &saved.file;
    match fs::read(file) {
        Ok(now) if now == saved.written.as_bytes() => {
            match &saved.original {
                Some(original) => replace(file, original.text.as_bytes(), original.mode)
                    .map_err(|source| DnsError::Write { path: file.clone(), source })?,
                None => fs::remove_file(file).map_err(|source| DnsError::Remove { path: file.clone(), source })?,
            }
            tracing::info!(file = %file.display(), "dns: the host's own resolv.conf is back");
        }
        _ => tracing::warn!(
            file = %file.display(),
            "dns: the file was rewritten by another program while the tunnel was up; left as it is (the saved copy is older)"
        ),
    }
    match fs::remove_file(state) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(DnsError::Remove { path: state.into(), source: err }),
        _ => Ok(()),
    }
}

/// Writes the record as a new file renamed into place: a record is whole or absent.
fn save(state: &Path, saved: &Saved) -> io::Result<()> {
    if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_string_pretty(saved).map_err(io::Error::other)?;
    let tmp = sibling(state);
    let written = write_new(&tmp, json.as_bytes(), 0o600).and_then(|()| fs::rename(&tmp, state));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `file` now holds `bytes`, with `mode` if it is made anew.
fn replace(file: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = sibling(file);
    match write_new(&tmp, bytes, mode).and_then(|()| fs::rename(&tmp, file)) {
        Ok(()) => Ok(()),
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            tracing::debug!(file = %file.display(), %err, "dns: cannot replace the file by rename; rewriting it in place");
            let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(file)?;
            f.write_all(bytes)?;
            f.sync_all()
        }
    }
}

/// A new file beside `path` for this process.
fn sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.roamtun-{}", std::process::id()))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    // Set after creation: the umask would otherwise take bits away.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = "# from DHCP\nnameserver 198.18.1.1\nsearch lan\noptions edns0\n";

    fn servers() -> Vec<IpAddr> {
        vec!["100.64.0.1".parse().unwrap(), "fd64::1".parse().unwrap()]
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_servers_are_written_and_the_file_is_put_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        let state = dir.path().join("run/client.dns");
        fs::write(&conf, ORIGINAL).unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).unwrap();
        let replaced = Replaced::apply(&conf, &servers(), state.clone()).unwrap();
        let now = fs::read_to_string(&conf).unwrap();
        assert!(now.ends_with("nameserver 100.64.0.1\nnameserver fd64::1\n"), "{now}");
        assert!(now.contains(&state.display().to_string()), "the file says where the original is: {now}");
        assert_eq!(mode(&conf), 0o644, "readable by every user's resolver");
        assert!(state.exists(), "the original is saved before the file is written");
        assert_eq!(replaced.status().file.as_deref(), Some(conf.as_path()));
        replaced.restore();
        assert_eq!(fs::read_to_string(&conf).unwrap(), ORIGINAL);
        assert_eq!(mode(&conf), 0o644);
        assert!(!state.exists(), "the record is removed once the file is back");
    }

    #[test]
    fn a_symlinked_resolv_conf_keeps_its_link_and_its_target_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let managed = dir.path().join("managed");
        fs::create_dir(&managed).unwrap();
        fs::write(managed.join("resolv.conf"), ORIGINAL).unwrap();
        let link = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink("managed/resolv.conf", &link).unwrap();
        let replaced = Replaced::apply(&link, &servers(), dir.path().join("client.dns")).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("managed/resolv.conf"));
        assert!(fs::read_to_string(&link).unwrap().contains("nameserver 100.64.0.1"));
        drop(replaced);
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("managed/resolv.conf"), "the link is untouched");
        assert_eq!(fs::read_to_string(managed.join("resolv.conf")).unwrap(), ORIGINAL, "dropping restores too");
        let dangling = dir.path().join("dangling.conf");
        std::os::unix::fs::symlink("nowhere/resolv.conf", &dangling).unwrap();
        let err = Replaced::apply(&dangling, &servers(), dir.path().join("d.dns")).unwrap_err();
        assert!(err.to_string().contains("which does not exist"), "{err}");
    }

    #[test]
    fn a_file_rewritten_by_someone_else_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        let state = dir.path().join("client.dns");
        fs::write(&conf, ORIGINAL).unwrap();
        let replaced = Replaced::apply(&conf, &servers(), state.clone()).unwrap();
        let newer = "# the DHCP client renewed its lease\nnameserver 198.18.2.1\n";
        fs::write(&conf, newer).unwrap();
        replaced.restore();
        assert_eq!(fs::read_to_string(&conf).unwrap(), newer, "the newer settings win over the saved copy");
        assert!(!state.exists());
    }

    #[test]
    fn a_killed_clients_copy_is_put_back_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        let state = dir.path().join("client.dns");
        fs::write(&conf, ORIGINAL).unwrap();
        // SIGKILL: nothing runs after the file is written.
        std::mem::forget(Replaced::apply(&conf, &servers(), state.clone()).unwrap());
        assert_ne!(fs::read_to_string(&conf).unwrap(), ORIGINAL);
        recover(&state).unwrap();
        assert_eq!(fs::read_to_string(&conf).unwrap(), ORIGINAL);
        assert!(!state.exists());
        recover(&state).unwrap();
        assert_eq!(fs::read_to_string(&conf).unwrap(), ORIGINAL, "no record: nothing to do");
    }

    #[test]
    fn a_file_that_did_not_exist_is_removed_again() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        let replaced = Replaced::apply(&conf, &servers(), dir.path().join("client.dns")).unwrap();
        assert!(conf.exists());
        replaced.restore();
        assert!(!conf.exists());
    }
}
