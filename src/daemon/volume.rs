//! The client's volume file: what each capped uplink carried this period, kept in the state
//! directory so that a restart (or a crash, or a reboot) does not hand the uplink a fresh cap. The
//! periods are `roamtun_proto::link::volume`'s; this module reads, writes and times the file.
//!
//! The file is JSON, written whole to a temporary file (mode 0600) and renamed into place, so a
//! crash of the daemon leaves the old one or the new one:
//! `{"uplinks": {"wwan0": {"period_start": "2026-12-01", "bytes": 1234}}}`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use roamtun_proto::link::manager::LinkManager;
use roamtun_proto::link::volume::{utc_date, Periods};
use roamtun_proto::time::{Duration, Instant};
use serde::{Deserialize, Serialize};
use time::Date;

use crate::config::UplinkConfig;

/// How long a count may go unsaved: what a crash can make the daemon forget.
const SAVE_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Serialize, Deserialize)]
struct VolumeFile {
    uplinks: BTreeMap<String, Saved>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    /// The first day of the period the bytes count in, `YYYY-MM-DD` (UTC).
    period_start: String,
    bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot read the volume file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the volume file {path} is not what roamtun writes: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("cannot write the volume file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

pub(super) struct VolumeStore {
    path: PathBuf,
    periods: Periods,
    /// The capped uplinks: only they are counted in the file.
    capped: Vec<String>,
    /// What was last written (or read), to write only when something changed.
    written: BTreeMap<String, u64>,
    next_save: Instant,
    /// The last write failed: the next failure is not logged again.
    failing: bool,
}

impl VolumeStore {
    /// `path` for the configured `uplinks`; `None` when none of them has a cap (nothing to keep).
    /// What the file holds for this period is given to `links`; a file that cannot be read is
    /// reported and the count starts from zero (a cap decides preference, it never stops traffic).
    pub(super) fn open(path: PathBuf, uplinks: &[UplinkConfig], links: &mut LinkManager, now: Instant) -> Option<Self> {
        let capped: Vec<String> = uplinks.iter().filter(|u| u.cap_gib.is_some()).map(|u| u.name.clone()).collect();
        if capped.is_empty() {
            return None;
        }
        let days: Vec<(String, u8)> = uplinks.iter().map(|u| (u.name.clone(), u.cap_reset_day)).collect();
        let periods = Periods::new(&days, today());
        let mut store = VolumeStore {
            path,
            periods,
            capped,
            written: BTreeMap::new(),
            next_save: now + SAVE_EVERY,
            failing: false,
        };
        match read(&store.path) {
            Ok(file) => store.restore(file, links),
            Err(err) => tracing::warn!(error = %err, "the capped uplinks' volume starts from zero"),
        }
        Some(store)
    }

    fn restore(&mut self, file: VolumeFile, links: &mut LinkManager) {
        for (name, saved) in file.uplinks {
            let Some(start) = self.periods.start(&name).filter(|_| self.capped.contains(&name)) else { continue };
            if parse_date(&saved.period_start) != Some(start) {
                tracing::info!(uplink = %name, period = %saved.period_start, bytes = saved.bytes, "the saved volume is of an earlier period; counting from zero");
                continue;
            }
            tracing::info!(uplink = %name, period = %start, bytes = saved.bytes, "volume of this period restored");
            links.restore_volume(&name, saved.bytes);
            self.written.insert(name, saved.bytes);
        }
    }

    /// Every `SAVE_EVERY`: starts the periods that began (their counts go to zero) and writes the
    /// counts if they changed.
    pub(super) fn tick(&mut self, links: &mut LinkManager, now: Instant) {
        if now < self.next_save {
            return;
        }
        self.next_save = now + SAVE_EVERY;
        for name in self.periods.roll(today()) {
            tracing::info!(uplink = %name, used = links.used_bytes(&name), "a new volume period began; counting from zero");
            links.new_period(&name);
        }
        self.save(links);
    }

    /// The first day of `uplink`'s current period, if it has a cap.
    pub(super) fn period_start(&self, uplink: &str) -> Option<String> {
        self.capped.iter().any(|n| n == uplink).then(|| self.periods.start(uplink))?.map(|d| d.to_string())
    }

    /// Writes the counts if they changed since the last write (also at stop).
    pub(super) fn save(&mut self, links: &LinkManager) {
        let counts: BTreeMap<String, u64> = self.capped.iter().map(|n| (n.clone(), links.used_bytes(n))).collect();
        if counts == self.written {
            return;
        }
        let file = VolumeFile {
            uplinks: counts
                .iter()
                .filter_map(|(name, bytes)| {
                    let start = self.periods.start(name)?;
                    Some((name.clone(), Saved { period_start: start.to_string(), bytes: *bytes }))
                })
                .collect(),
        };
        match write(&self.path, &file) {
            Ok(()) => {
                self.written = counts;
                self.failing = false;
            }
            Err(err) if !self.failing => {
                tracing::warn!(error = %err, "the capped uplinks' volume is not saved; a restart would forget it");
                self.failing = true;
            }
            Err(_) => {}
        }
    }
}

/// The volume file of the client whose TUN is `tun` (the name is unique among the clients a host
/// runs), in `dir`.
pub(super) fn volume_path(dir: &Path, tun: &str) -> PathBuf {
    dir.join(format!("{tun}.volume.json"))
}

fn today() -> Date {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    utc_date(i64::try_from(secs).unwrap_or(0)).unwrap_or(Date::MIN)
}

fn parse_date(text: &str) -> Option<Date> {
    let mut parts = text.splitn(3, '-');
    let year = parts.next()?.parse().ok()?;
    let month = time::Month::try_from(parts.next()?.parse::<u8>().ok()?).ok()?;
    let day = parts.next()?.parse().ok()?;
    Date::from_calendar_date(year, month, day).ok()
}

/// The file's counts; an absent file is an empty one (the first start).
fn read(path: &Path) -> Result<VolumeFile, VolumeError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VolumeFile::default()),
        Err(source) => return Err(VolumeError::Read { path: path.into(), source }),
    };
    serde_json::from_str(&text).map_err(|source| VolumeError::Parse { path: path.into(), source })
}

fn write(path: &Path, file: &VolumeFile) -> Result<(), VolumeError> {
    let err = |source| VolumeError::Write { path: path.into(), source };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut out =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
    let text = serde_json::to_vec(file).expect("the volume file serializes");
    // No fsync: it runs on the engine task, and on a router's flash it can stall the data path for
    // long. The rename still replaces the file whole; a power cut may cost the last counts (or, on
    // some file systems, leave an empty file, which the next start reports and counts from zero).
    out.write_all(&text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use roamtun_proto::link::policy::{PolicyConfig, UplinkPolicy};

    use super::*;

    fn uplinks() -> Vec<UplinkConfig> {
        let capped = |name: &str| UplinkConfig {
            name: name.into(),
            metered: true,
            cost_per_gib: 0.0,
            kind: None,
            cap_gib: Some(1.0),
            cap_reset_day: 1,
        };
        let free = UplinkConfig { cap_gib: None, metered: false, ..capped("eth0") };
        vec![free, capped("wwan0")]
    }

    fn manager() -> LinkManager {
        let policy = |priority| UplinkPolicy { priority, cost_per_gib: 0.0, metered: false, cap_bytes: None };
        let config =
            PolicyConfig { min_gain: 5.0, dwell: Duration::from_secs(10), fail_back_after: Duration::from_secs(30) };
        LinkManager::new(config, &[("eth0".into(), policy(0)), ("wwan0".into(), policy(1))])
    }

    #[test]
    fn a_count_outlives_the_daemon_and_only_capped_uplinks_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = volume_path(&dir.path().join("state"), "roam0");
        let now = Instant::from_millis(0);
        let mut links = manager();
        let mut store = VolumeStore::open(path.clone(), &uplinks(), &mut links, now).unwrap();
        links.carried("wwan0", 5_000);
        links.carried("eth0", 7_000);
        store.tick(&mut links, now + Duration::from_secs(1));
        assert!(!path.exists(), "written before SAVE_EVERY");
        store.save(&links);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the volume file is readable by others");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"wwan0\"") && text.contains("5000") && !text.contains("eth0"), "{text}");

        // The next start: wwan0's count goes on, eth0's (no cap) starts from zero.
        let mut again = manager();
        VolumeStore::open(path.clone(), &uplinks(), &mut again, now).unwrap();
        assert_eq!((again.used_bytes("wwan0"), again.used_bytes("eth0")), (5_000, 0));

        // A count of an earlier period is not carried into this one.
        let start = Periods::new(&[("wwan0".into(), 1)], today()).start("wwan0").unwrap().to_string();
        assert!(text.contains(&start), "{text} does not name the period's start {start}");
        std::fs::write(&path, text.replace(&start, "2001-01-01")).unwrap();
        let mut later = manager();
        VolumeStore::open(path.clone(), &uplinks(), &mut later, now).unwrap();
        assert_eq!(later.used_bytes("wwan0"), 0, "a count of 2001 was restored");
    }

    #[test]
    fn a_broken_file_is_reported_and_the_count_starts_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = volume_path(dir.path(), "roam0");
        std::fs::write(&path, "{ not json").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("roam0.volume.json") && err.contains("is not what roamtun writes"), "{err}");
        let mut links = manager();
        let mut store = VolumeStore::open(path.clone(), &uplinks(), &mut links, Instant::from_millis(0)).unwrap();
        assert_eq!(links.used_bytes("wwan0"), 0);
        // The next save replaces it.
        links.carried("wwan0", 42);
        store.save(&links);
        assert!(read(&path).is_ok());
        assert!(
            VolumeStore::open(path, &uplinks()[..1], &mut manager(), Instant::from_millis(0)).is_none(),
            "no cap, yet a store"
        );
    }
}
