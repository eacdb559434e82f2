//! Deserializers for values written as strings or in more than one form; a bad value is reported
//! at its line by the TOML parser.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Values that parse from a string (keys, prefixes) deserialize through this, so that a bad value is
/// reported at its line by the TOML parser.
pub(super) fn from_str<'de, D: Deserializer<'de>, T>(d: D) -> Result<T, D::Error>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(serde::de::Error::custom)
}

/// One socket address or a list of them (`"198.18.1.1:7700"` or `["198.18.1.1:7700", "[2001:2::1]:7700"]`).
pub(super) fn socket_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(SocketAddr),
        Many(Vec<SocketAddr>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(a)) => Ok(vec![a]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "expected \"ip:port\" (\"[v6]:port\" for IPv6) or a list of them, e.g. [\"198.18.1.1:7700\", \"[2001:2::1]:7700\"]",
        )),
    }
}

pub(super) fn optional_from_str<'de, D: Deserializer<'de>, T>(d: D) -> Result<Option<T>, D::Error>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    from_str(d).map(Some)
}

pub(super) fn vec_from_str<'de, D: Deserializer<'de>, T>(d: D) -> Result<Vec<T>, D::Error>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let v = Vec::<String>::deserialize(d)?;
    v.iter().map(|s| s.trim().parse().map_err(serde::de::Error::custom)).collect()
}
