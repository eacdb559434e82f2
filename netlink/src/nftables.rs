//! Masquerade and forward rules in nftables, over `NETLINK_NETFILTER` with the rust-netlink message
//! types (`netlink-packet-netfilter`); never by running `nft`. Two uses: a server's exit NAT (the
//! clients' prefixes out of its exit interface, [`Masquerade::exit`]) and a router's LAN into its
//! client TUN ([`Masquerade::lan`]).
//!
//! Everything lives in one table of its own, [`Masquerade::table`] (`inet roamtun_<tun>` for the
//! exit, `inet roamtun_lan_<tun>` for a LAN), so that
//! deleting that table removes exactly what was added and nothing of the host's own ruleset. The
//! table is created *owned* by the socket that made it (`NFT_TABLE_F_OWNER`): the kernel deletes it
//! by itself when that socket closes, so a daemon killed with SIGKILL leaves nothing behind either
//! (and [`Nftables::install`] still removes a leftover of the same name first, e.g. one made
//! without an owner).
//!
//! The table holds, for each prefix (IPv4 or IPv6), with OUT the interface they leave by and IN the
//! one they come in on (the server's TUN; any interface for a LAN, whose ports a router may bridge):
//!
//! * chain `postrouting` (nat, priority srcnat): `oifname OUT ip saddr PREFIX masquerade`;
//! * chain `forward` (filter, priority filter, policy accept): `[iifname IN] oifname OUT ip saddr
//!   PREFIX accept` and `iifname OUT [oifname IN] ip daddr PREFIX ct state established,related
//!   accept`.
//!
//! nftables runs every table's base chain on a hook, and a drop in any of them is final: the
//! forward rules let the clients' traffic through where nothing else drops it, but a host firewall
//! whose forward policy is drop (ufw, Docker, firewalld) must allow it as well.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook, HookNumber,
    Immediate, InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register,
    RuleAttribute, RuleMessage, TableAttribute, TableFlags, TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use rtnetlink::packet_core::{
    DefaultNla, NetlinkMessage, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket};

/// `NFNL_SUBSYS_NFTABLES`, in the batch messages' `res_id`.
const SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWTABLE`, the type of the answer to a GETTABLE for a table that exists.
const MSG_NEWTABLE: u16 = 0;
/// `NLMSG_ERROR`: an acknowledgement (error 0) or a refusal.
const NLMSG_ERROR: u16 = 2;
/// `NF_ACCEPT`, the verdict code.
const NF_ACCEPT: u32 = 1;
/// `NFPROTO_IPV4` / `NFPROTO_IPV6`, as `meta nfproto` loads them.
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// `NFT_PAYLOAD_NETWORK_HEADER`.
const PAYLOAD_NETWORK: u32 = 1;
/// The `ct` expression's attributes and the key of the connection's state.
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATE: u32 = 0;
/// `ct state established,related`: the state bits of `IP_CT_ESTABLISHED` (0) and `IP_CT_RELATED`
/// (1), each `1 << (state + 1)`, in host byte order as the kernel loads them.
const CT_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);
/// The nat chain at `srcnat`, the filter chain at `filter`, as `nft` names those priorities.
const PRIORITY_SRCNAT: i32 = 100;
const PRIORITY_FILTER: i32 = 0;
/// How long an answer from the kernel may take before the request counts as failed.
const REPLY_TIMEOUT: libc::timeval = libc::timeval { tv_sec: 5, tv_usec: 0 };

/// Why the exit NAT could not be installed or removed; each names the table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NftablesError {
    #[error("failed to open a netfilter netlink socket")]
    Connect {
        #[source]
        source: std::io::Error,
    },
    #[error("failed to send the nftables request for table inet {table}")]
    Send {
        table: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from the kernel to the nftables request for table inet {table}")]
    Receive {
        table: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused one message of the request (errno as `source`).
    #[error("the kernel refused to {action} (nftables table inet {table})")]
    Refused {
        action: &'static str,
        table: String,
        #[source]
        source: std::io::Error,
    },
}

impl NftablesError {
    /// The kernel said EPERM: no CAP_NET_ADMIN, or the table is owned by another live process.
    pub fn is_permission_denied(&self) -> bool {
        match self {
            Self::Connect { source } | Self::Refused { source, .. } => {
                source.kind() == std::io::ErrorKind::PermissionDenied
            }
            _ => false,
        }
    }
}

/// What a masquerade is made of (sans-IO: [`Masquerade::messages`] turns it into the requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    table: String,
    /// Where the prefixes' packets come in; `None`: any interface.
    pub inbound: Option<String>,
    /// Where they leave, masqueraded to its address.
    pub outbound: String,
    /// The source prefixes, both families.
    pub prefixes: Vec<(IpAddr, u8)>,
}

impl Masquerade {
    /// A server's exit NAT: the clients' prefixes (`client_prefixes`) from its TUN out of
    /// `exit_interface`.
    pub fn exit(tun: &str, exit_interface: &str, prefixes: Vec<(IpAddr, u8)>) -> Self {
        Masquerade { table: table_name(tun), inbound: Some(tun.into()), outbound: exit_interface.into(), prefixes }
    }

    /// A router's LAN (`[lan] prefixes`, masquerade mode) into the client's TUN, where its hosts
    /// then speak from the client's virtual IP.
    pub fn lan(tun: &str, prefixes: Vec<(IpAddr, u8)>) -> Self {
        Masquerade { table: lan_table_name(tun), inbound: None, outbound: tun.into(), prefixes }
    }

    /// The table's name: one per TUN and use, so that two daemons on one host keep apart.
    pub fn table(&self) -> String {
        self.table.clone()
    }

    /// The messages that create the table, its chains and rules (without the batch's begin and end).
    pub fn messages(&self) -> Vec<(NfTablesMessage, u16)> {
        let table = self.table();
        let mut out = vec![(
            NfTablesMessage::NewTable(TableMessage {
                attributes: vec![TableAttribute::Name(table.clone()), TableAttribute::Flags(TableFlags::Owner)],
            }),
            NLM_F_CREATE | NLM_F_EXCL,
        )];
        let chain = |name: &str, kind: &str, hook: InetHookNumber, priority: i32| {
            NfTablesMessage::NewChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(table.clone()),
                    ChainAttribute::Name(name.into()),
                    ChainAttribute::Hook(vec![
                        Hook::Number(HookNumber::Inet(hook)),
                        // The kernel reads the signed priority's bits.
                        Hook::Priority(priority as u32),
                    ]),
                    ChainAttribute::Policy(NF_ACCEPT),
                    ChainAttribute::Type(kind.into()),
                ],
            })
        };
        out.push((chain("postrouting", "nat", InetHookNumber::PostRouting, PRIORITY_SRCNAT), NLM_F_CREATE));
        out.push((chain("forward", "filter", InetHookNumber::Forward, PRIORITY_FILTER), NLM_F_CREATE));
        let rule = |chain: &str, expressions: Vec<ListAttribute<ExpressionAttribute>>| {
            let message = NfTablesMessage::NewRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(table.clone()),
                    RuleAttribute::Chain(chain.into()),
                    RuleAttribute::Expressions(expressions),
                ],
            });
            (message, NLM_F_CREATE | NLM_F_APPEND)
        };
        let inbound = |key| self.inbound.as_deref().map(|name| interface(key, name)).unwrap_or_default();
        for &(addr, len) in &self.prefixes {
            let mut masquerade = interface(MetaKey::Oifname, &self.outbound);
            masquerade.extend(address(addr, len, Side::Source));
            masquerade.push(named("masq"));
            out.push(rule("postrouting", masquerade));

            let mut going = inbound(MetaKey::Iifname);
            going.extend(interface(MetaKey::Oifname, &self.outbound));
            going.extend(address(addr, len, Side::Source));
            going.push(accept());
            out.push(rule("forward", going));

            let mut replies = interface(MetaKey::Iifname, &self.outbound);
            replies.extend(inbound(MetaKey::Oifname));
            replies.extend(address(addr, len, Side::Destination));
            replies.extend(established_or_related());
            replies.push(accept());
            out.push(rule("forward", replies));
        }
        out
    }
}

/// The exit NAT's table of the server whose TUN is `tun`.
pub fn table_name(tun: &str) -> String {
    format!("roamtun_{tun}")
}

/// The LAN masquerade's table of the client whose TUN is `tun`.
pub fn lan_table_name(tun: &str) -> String {
    format!("roamtun_lan_{tun}")
}

enum Side {
    Source,
    Destination,
}

fn expr(e: Expressions) -> ListAttribute<ExpressionAttribute> {
    e.into()
}

/// An expression without data, by name (`masq`).
fn named(name: &str) -> ListAttribute<ExpressionAttribute> {
    ListAttribute::Element(vec![ExpressionAttribute::Name(name.into())])
}

fn accept() -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(Verdict::Other(NF_ACCEPT))])),
    ]))
}

fn compare(op: Operator, value: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(value)),
    ]))
}

/// `iifname NAME` / `oifname NAME`: the name NUL-padded to IFNAMSIZ, as `nft` compares it.
fn interface(key: MetaKey, name: &str) -> Vec<ListAttribute<ExpressionAttribute>> {
    let mut padded = name.as_bytes().to_vec();
    padded.resize(libc::IFNAMSIZ, 0);
    vec![
        expr(Expressions::Meta(vec![Meta::DestinationRegister(Register::Reg1), Meta::Key(key)])),
        compare(Operator::Equal, padded),
    ]
}

/// `ip saddr PREFIX` (or daddr, or `ip6 …`): the family first (an inet table sees both), then the
/// whole address masked to the prefix.
fn address(addr: IpAddr, len: u8, side: Side) -> Vec<ListAttribute<ExpressionAttribute>> {
    let (proto, offset, bytes) = match (addr, side) {
        (IpAddr::V4(a), Side::Source) => (NFPROTO_IPV4, 12, a.octets().to_vec()),
        (IpAddr::V4(a), Side::Destination) => (NFPROTO_IPV4, 16, a.octets().to_vec()),
        (IpAddr::V6(a), Side::Source) => (NFPROTO_IPV6, 8, a.octets().to_vec()),
        (IpAddr::V6(a), Side::Destination) => (NFPROTO_IPV6, 24, a.octets().to_vec()),
    };
    let size = bytes.len();
    let mask = prefix_mask(len, size);
    let network: Vec<u8> = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
    vec![
        expr(Expressions::Meta(vec![Meta::DestinationRegister(Register::Reg1), Meta::Key(MetaKey::Nfproto)])),
        compare(Operator::Equal, vec![proto]),
        expr(Expressions::Payload(vec![
            Payload::DestinationRegister(Register::Reg1),
            Payload::Base(PAYLOAD_NETWORK),
            Payload::Offset(offset),
            Payload::Len(size as u32),
        ])),
        expr(Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(size as u32),
            Bitwise::Mask(DataAttribute::Value(mask)),
            Bitwise::Xor(DataAttribute::Value(vec![0; size])),
        ])),
        compare(Operator::Equal, network),
    ]
}

/// `len` leading one bits over `size` bytes.
fn prefix_mask(len: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| {
            let bits = usize::from(len).saturating_sub(i * 8).min(8);
            (0xff00u16 >> bits) as u8
        })
        .collect()
}

/// `ct state established,related`.
fn established_or_related() -> Vec<ListAttribute<ExpressionAttribute>> {
    vec![
        expr(Expressions::Other {
            expression_type: "ct".into(),
            attributes: vec![
                DefaultNla::new(NFTA_CT_DREG, u32::from(Register::Reg1).to_be_bytes().to_vec()),
                DefaultNla::new(NFTA_CT_KEY, NFT_CT_STATE.to_be_bytes().to_vec()),
            ],
        }),
        expr(Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(4),
            Bitwise::Mask(DataAttribute::Value(CT_ESTABLISHED_RELATED.to_ne_bytes().to_vec())),
            Bitwise::Xor(DataAttribute::Value(vec![0; 4])),
        ])),
        compare(Operator::NotEqual, vec![0; 4]),
    ]
}

/// A `NETLINK_NETFILTER` socket. The exit NAT's table is owned by it: keep it for as long as the
/// table should stay (dropping it deletes the table, in the kernel).
pub struct Nftables {
    socket: Socket,
    sequence: u32,
}

impl Nftables {
    /// Opens the socket in the calling thread's network namespace.
    pub fn connect() -> Result<Self, NftablesError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|source| NftablesError::Connect { source })?;
        socket.bind_auto().map_err(|source| NftablesError::Connect { source })?;
        // SAFETY: setsockopt reads a timeval of the size given; the fd is the socket we own.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&REPLY_TIMEOUT as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NftablesError::Connect { source: std::io::Error::last_os_error() });
        }
        Ok(Nftables { socket, sequence: 0 })
    }

    /// Whether table `inet NAME` exists.
    pub fn table_exists(&mut self, name: &str) -> Result<bool, NftablesError> {
        let get = NfTablesMessage::GetTable(TableMessage { attributes: vec![TableAttribute::Name(name.into())] });
        let seq = self.next_sequence();
        let bytes = serialize(get, NetfilterProtoFamily::Inet, NLM_F_REQUEST, seq);
        self.socket.send(&bytes, 0).map_err(|source| NftablesError::Send { table: name.into(), source })?;
        loop {
            for (kind, reply_seq, errno) in self.receive(name)? {
                if reply_seq != seq {
                    continue;
                }
                if kind == (SUBSYS_NFTABLES << 8) | MSG_NEWTABLE {
                    return Ok(true);
                }
                match errno {
                    Some(libc::ENOENT) => return Ok(false),
                    Some(errno) => {
                        return Err(NftablesError::Refused {
                            action: "look the table up",
                            table: name.into(),
                            source: std::io::Error::from_raw_os_error(errno),
                        })
                    }
                    None => {}
                }
            }
        }
    }

    /// Installs `nat`: a table of the same name already there (a leftover) is deleted first.
    /// Returns whether there was one.
    pub fn install(&mut self, nat: &Masquerade) -> Result<bool, NftablesError> {
        let table = nat.table();
        let leftover = self.table_exists(&table)?;
        if leftover {
            self.delete(&table)?;
        }
        self.batch(&table, "create the masquerade table, its chains and rules", nat.messages())?;
        Ok(leftover)
    }

    /// Deletes table `inet NAME`; one that is not there is success.
    pub fn delete(&mut self, name: &str) -> Result<(), NftablesError> {
        let del = NfTablesMessage::DeleteTable(TableMessage { attributes: vec![TableAttribute::Name(name.into())] });
        match self.batch(name, "delete the exit NAT table", vec![(del, 0)]) {
            Err(NftablesError::Refused { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    /// Sends `messages` in one transaction (all or nothing) and waits for the kernel's answer to
    /// each of them.
    fn batch(
        &mut self,
        table: &str,
        action: &'static str,
        messages: Vec<(NfTablesMessage, u16)>,
    ) -> Result<(), NftablesError> {
        let mut bytes = Vec::new();
        let begin = self.next_sequence();
        bytes.extend(serialize_control(ControlMessage::BatchBegin, begin));
        let mut waiting = Vec::new();
        for (message, flags) in messages {
            let seq = self.next_sequence();
            waiting.push(seq);
            bytes.extend(serialize(message, NetfilterProtoFamily::Inet, NLM_F_REQUEST | NLM_F_ACK | flags, seq));
        }
        let end = self.next_sequence();
        bytes.extend(serialize_control(ControlMessage::BatchEnd, end));
        self.socket.send(&bytes, 0).map_err(|source| NftablesError::Send { table: table.into(), source })?;
        // Every message asked for an acknowledgement, so each gets one answer: an ACK, or the
        // error that aborted the whole transaction.
        let mut refusal = None;
        while !waiting.is_empty() {
            for (_, seq, errno) in self.receive(table)? {
                if let Some(i) = waiting.iter().position(|&s| s == seq) {
                    waiting.swap_remove(i);
                    if let (Some(errno), None) = (errno, &refusal) {
                        refusal = Some(errno);
                    }
                }
            }
        }
        match refusal {
            None => Ok(()),
            Some(errno) => Err(NftablesError::Refused {
                action,
                table: table.into(),
                source: std::io::Error::from_raw_os_error(errno),
            }),
        }
    }

    /// One read: each message's type, sequence number and, for an `NLMSG_ERROR`, its errno
    /// (`None` inside: an ACK).
    fn receive(&self, table: &str) -> Result<Vec<(u16, u32, Option<i32>)>, NftablesError> {
        let mut buffer = vec![0u8; 64 * 1024];
        let len = self
            .socket
            .recv(&mut &mut buffer[..], 0)
            .map_err(|source| NftablesError::Receive { table: table.into(), source })?;
        Ok(parse_replies(&buffer[..len]))
    }
}

/// The headers of the netlink messages in `bytes` (type, sequence, errno of an error message).
fn parse_replies(mut bytes: &[u8]) -> Vec<(u16, u32, Option<i32>)> {
    let mut out = Vec::new();
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            break;
        }
        let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
        let seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let errno = (kind == NLMSG_ERROR && len >= 20)
            .then(|| i32::from_ne_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]))
            .and_then(|code| (code != 0).then_some(-code));
        out.push((kind, seq, errno));
        // Messages are 4-byte aligned.
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
    }
    out
}

fn serialize(message: NfTablesMessage, family: NetfilterProtoFamily, flags: u16, seq: u32) -> Vec<u8> {
    let mut message = NetlinkMessage::from(NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), message));
    message.header.flags = flags;
    message.header.sequence_number = seq;
    finish(message)
}

fn serialize_control(message: ControlMessage, seq: u32) -> Vec<u8> {
    let header = NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, SUBSYS_NFTABLES);
    let mut message = NetlinkMessage::from(NetfilterMessage::new(header, message));
    message.header.flags = NLM_F_REQUEST;
    message.header.sequence_number = seq;
    finish(message)
}

fn finish(mut message: NetlinkMessage<NetfilterMessage>) -> Vec<u8> {
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat() -> Masquerade {
        Masquerade::exit(
            "roamsrv0",
            "eth0",
            vec![("100.64.0.0".parse().unwrap(), 10), ("fd00:64::".parse().unwrap(), 64)],
        )
    }

    #[test]
    fn a_table_of_its_own_with_a_masquerade_and_two_forward_rules_per_prefix() {
        let messages = nat().messages();
        assert_eq!(nat().table(), "roamtun_roamsrv0");
        let kinds: Vec<&str> = messages
            .iter()
            .map(|(m, _)| match m {
                NfTablesMessage::NewTable(_) => "table",
                NfTablesMessage::NewChain(_) => "chain",
                NfTablesMessage::NewRule(_) => "rule",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["table", "chain", "chain", "rule", "rule", "rule", "rule", "rule", "rule"]);
        let NfTablesMessage::NewTable(table) = &messages[0].0 else { unreachable!("checked above") };
        assert!(table.attributes.contains(&TableAttribute::Flags(TableFlags::Owner)), "deleted with its socket");
        assert_eq!(messages[0].1 & NLM_F_EXCL, NLM_F_EXCL, "never merged into a table that is not ours");
    }

    #[test]
    fn prefix_masks_keep_the_leading_bits() {
        assert_eq!(prefix_mask(10, 4), [0xff, 0xc0, 0, 0]);
        assert_eq!(prefix_mask(0, 4), [0, 0, 0, 0]);
        assert_eq!(prefix_mask(32, 4), [0xff; 4]);
        assert_eq!(prefix_mask(64, 16)[..9], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
    }

    #[test]
    fn replies_are_split_and_errors_read() {
        let mut bytes = Vec::new();
        // An ACK (error 0) for sequence 7 and an ENOENT for sequence 8, each with the request's
        // header after the code.
        for (seq, code) in [(7u32, 0i32), (8, -libc::ENOENT)] {
            bytes.extend(36u32.to_ne_bytes());
            bytes.extend(NLMSG_ERROR.to_ne_bytes());
            bytes.extend(0u16.to_ne_bytes());
            bytes.extend(seq.to_ne_bytes());
            bytes.extend(0u32.to_ne_bytes());
            bytes.extend(code.to_ne_bytes());
            bytes.extend([0u8; 16]);
        }
        assert_eq!(parse_replies(&bytes), [(NLMSG_ERROR, 7, None), (NLMSG_ERROR, 8, Some(libc::ENOENT))]);
    }
}
