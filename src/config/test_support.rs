//! Config texts the tests of every part share.

use crate::keys::PrivateKey;

pub(super) fn key() -> String {
    PrivateKey::generate().unwrap().to_base64().to_string()
}

pub(super) fn server_toml(extra: &str) -> String {
    let pk = PrivateKey::generate().unwrap().public_key();
    format!(
        "private_key = \"{}\"\nlisten = \"198.18.1.1:7700\"\nvirtual_ips = [\"100.64.0.1\"]\n\
         client_prefixes = [\"100.64.0.0/10\"]\n\n[[peer]]\nname = \"laptop\"\npublic_key = \"{pk}\"\n\
         virtual_ips = [\"100.64.0.2\"]\n{extra}",
        key()
    )
}
