//! `uplinks`: the client's interfaces for the relay, in order of preference, and what each is.

use std::path::Path;

use serde::Deserialize;

/// The kinds of uplink roamtun tells apart.
pub const UPLINK_KINDS: [&str; 3] = ["ethernet", "wifi", "wwan"];

/// What sysfs says an interface is: Wi-Fi when it has a wireless or phy80211 entry, WWAN when its
/// uevent says DEVTYPE=wwan, Ethernet otherwise (including virtual links).
pub fn uplink_kind(name: &str) -> &'static str {
    let dir = Path::new("/sys/class/net").join(name);
    if dir.join("wireless").exists() || dir.join("phy80211").exists() {
        return "wifi";
    }
    let uevent = std::fs::read_to_string(dir.join("uevent")).unwrap_or_default();
    if uevent.lines().any(|l| l.trim() == "DEVTYPE=wwan") {
        return "wwan";
    }
    "ethernet"
}

/// One uplink of the client, in `uplinks` order (earlier is preferred).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "UplinkEntry")]
pub struct UplinkConfig {
    pub name: String,
    /// Paid by volume or capped: used only when no free uplink is healthy.
    pub metered: bool,
    /// Money per GiB (any currency; only comparisons matter).
    pub cost_per_gib: f64,
    /// "ethernet", "wifi" or "wwan"; by default what sysfs says.
    pub kind: Option<String>,
    /// A volume cap in GiB per period: beyond it the uplink is used only when no other works.
    pub cap_gib: Option<f64>,
    /// The day of the month (UTC, 1 to 28) the uplink's volume starts counting from zero again, as
    /// its plan bills it.
    pub cap_reset_day: u8,
}

impl UplinkConfig {
    /// `cap_gib` in bytes.
    pub fn cap_bytes(&self) -> Option<u64> {
        self.cap_gib.map(|g| (g * (1u64 << 30) as f64) as u64)
    }
}

/// An entry of `uplinks` as written: a bare interface name, or a table.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "an interface name, or a table such as { name = \"wwan0\", metered = true, cost_per_gib = 2.5 }"
)]
enum UplinkEntry {
    Name(String),
    Table(UplinkTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UplinkTable {
    name: String,
    #[serde(default)]
    metered: bool,
    #[serde(default)]
    cost_per_gib: f64,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    cap_gib: Option<f64>,
    #[serde(default = "first_day")]
    cap_reset_day: u8,
}

fn first_day() -> u8 {
    1
}

impl From<UplinkEntry> for UplinkConfig {
    fn from(e: UplinkEntry) -> Self {
        match e {
            UplinkEntry::Name(name) => {
                UplinkConfig { name, metered: false, cost_per_gib: 0.0, kind: None, cap_gib: None, cap_reset_day: 1 }
            }
            UplinkEntry::Table(t) => UplinkConfig {
                name: t.name,
                metered: t.metered,
                cost_per_gib: t.cost_per_gib,
                kind: t.kind,
                cap_gib: t.cap_gib,
                cap_reset_day: t.cap_reset_day,
            },
        }
    }
}
