//! `control_group`: who besides root may use the control socket.

use std::str::FromStr;

/// `control_group`: a group of this host whose members may use the control socket besides root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlGroup {
    pub name: String,
    pub gid: u32,
}

impl FromStr for ControlGroup {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Ok(ControlGroup { name: group.name, gid: group.gid.as_raw() }),
            Ok(None) => Err(format!("control_group {name:?} is not a group on this host (see getent group)")),
            Err(err) => Err(format!("cannot look up control_group {name:?}: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::config::test_support::server_toml;
    use crate::config::ServerConfig;

    #[test]
    fn control_group_names_a_group_of_this_host() {
        let c = ServerConfig::from_toml(Path::new("s.toml"), &format!("control_group = \"root\"\n{}", server_toml("")))
            .unwrap();
        assert_eq!(c.control_group, Some(ControlGroup { name: "root".into(), gid: 0 }));
        let err = ServerConfig::from_toml(
            Path::new("s.toml"),
            &format!("control_group = \"no-such-group-rt\"\n{}", server_toml("")),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("control_group \"no-such-group-rt\" is not a group on this host"), "{err}");
        assert!(ServerConfig::from_toml(Path::new("s.toml"), &server_toml("")).unwrap().control_group.is_none());
    }
}
