//! Where a key is in a configuration file, and what its tables look like: for messages that say more
//! than the deserializer can (a line for an error that spans keys; `[peer]` written for `[[peer]]`; a
//! missing `[server]`). Reads the text with toml_edit, which keeps every item's place; never quotes it
//! (it may hold the private key).

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// One step down a key path: a key of a table, or an entry of an array.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The line (from 1) of the item at `path`, or of the deepest part of the path that exists (e.g.
/// the whole `listen` value when it is one address rather than a list). `None`: not valid TOML, or
/// the path's first key is absent.
pub fn line_of(text: &str, path: &[Step]) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    let mut span = None;
    for step in path {
        let (next, key_span) = match node.down(*step) {
            Some(found) => found,
            None => break,
        };
        span = next.span().or(key_span).or(span);
        node = next;
    }
    span.map(|s| line_at(text, s.start))
}

/// The line (from 1) of byte `offset`.
pub fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    /// The child at `step` and the span of its key, if it has one.
    fn down(&self, step: Step) -> Option<(Node<'a>, Option<Range<usize>>)> {
        match (self, step) {
            (Node::Table(t), Step::Key(k)) => Some((Node::Item(t.get(k)?), t.key(k).and_then(|k| k.span()))),
            (Node::Item(Item::Table(t)), Step::Key(_)) => Node::Table(t).down(step),
            (Node::Item(Item::ArrayOfTables(a)), Step::Index(i)) => Some((Node::Table(a.get(i)?), None)),
            (Node::Item(Item::Value(v)), _) => Node::Value(v).down(step),
            (Node::Value(Value::Array(a)), Step::Index(i)) => Some((Node::Value(a.get(i)?), None)),
            (Node::Value(Value::InlineTable(t)), Step::Key(k)) => {
                Some((Node::Value(t.get(k)?), t.key(k).and_then(|k| k.span())))
            }
            _ => None,
        }
    }

    fn span(&self) -> Option<Range<usize>> {
        match self {
            Node::Item(i) => i.span(),
            Node::Table(t) => t.span(),
            Node::Value(v) => v.span(),
        }
    }
}

/// Whether the parser's message `said` is about line `line` (it starts "line N, column M: ").
fn said_at(said: &str, line: Option<usize>) -> bool {
    line.is_some_and(|l| said.starts_with(&format!("line {l}, ")))
}

/// A server config whose tables are not what the daemon reads, said the way a user would fix it;
/// `said` is the parser's message, which this must be the cause of.
pub fn server_mistake(text: &str, said: &str) -> Option<String> {
    let doc = ImDocument::parse(text).ok()?;
    let (key, item) = doc.as_table().get_key_value("peer")?;
    let line = key.span().map(|s| line_at(text, s.start));
    if !said_at(said, line) {
        return None;
    }
    let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
    match item {
        Item::Table(_) => Some(format!(
            "{at}[peer] must be written [[peer]] (double brackets): each client is one [[peer]] table, repeated per \
             client"
        )),
        Item::Value(Value::InlineTable(_)) => {
            Some(format!("{at}peer = {{ … }} must be a [[peer]] table (double brackets), one per client"))
        }
        _ => None,
    }
}

/// A client config whose tables are not what the daemon reads, said the way a user would fix it;
/// `said` is the parser's message, which this must be the cause of.
pub fn client_mistake(text: &str, said: &str) -> Option<String> {
    let doc = ImDocument::parse(text).ok()?;
    let Some((key, item)) = doc.as_table().get_key_value("server") else {
        if !said.contains("missing field `server`") {
            return None;
        }
        return Some(
            "no [server] table: add one with the server's address and public_key, e.g.\n  [server]\n  address = \
             \"198.18.1.1:7700\"\n  public_key = \"…\"   # roamtun pubkey < server.key"
                .into(),
        );
    };
    let line = key.span().map(|s| line_at(text, s.start));
    if !said_at(said, line) {
        return None;
    }
    let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
    match item {
        Item::ArrayOfTables(_) => {
            Some(format!("{at}[[server]] must be written [server] (single brackets): a client has one server"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::{Index, Key};

    const TEXT: &str = "listen = \"198.18.1.1:7700\"\nvirtual_ips = [\"100.64.0.1\"]\n\n[[peer]]\nname = \"a\"\n\
                        virtual_ips = [\"100.64.0.2\",\n  \"100.64.0.3\"]\n\n[[peer]]\nname = \"b\"\n\
                        uplinks = [\"eth0\", { name = \"wwan0\", cap_gib = 2 }]\n";

    #[test]
    fn finds_the_line_of_a_nested_key() {
        assert_eq!(line_of(TEXT, &[Key("listen")]), Some(1));
        // One address rather than a list: the line of the whole value.
        assert_eq!(line_of(TEXT, &[Key("listen"), Index(0)]), Some(1));
        assert_eq!(line_of(TEXT, &[Key("peer"), Index(0), Key("virtual_ips"), Index(1)]), Some(7));
        assert_eq!(line_of(TEXT, &[Key("peer"), Index(1), Key("name")]), Some(10));
        assert_eq!(line_of(TEXT, &[Key("peer"), Index(1), Key("uplinks"), Index(1), Key("cap_gib")]), Some(11));
        assert_eq!(line_of(TEXT, &[Key("absent")]), None);
        assert_eq!(line_of("not = [toml", &[Key("not")]), None);
    }

    #[test]
    fn a_single_bracket_peer_is_named_as_such() {
        let text = "listen = \"198.18.1.1:7700\"\n[peer]\nname = \"a\"\n";
        let said = "line 2, column 1: invalid type: map, expected a sequence";
        let msg = server_mistake(text, said).unwrap();
        assert!(msg.starts_with("line 2: [peer] must be written [[peer]]"), "{msg}");
        // An error elsewhere (an earlier line) is left as the parser said it.
        assert!(server_mistake(text, "line 1, column 10: bad listen").is_none());
        assert!(server_mistake("[[peer]]\nname = \"a\"\n", "line 1, column 1: x").is_none());
        let inline = server_mistake("peer = { name = \"a\" }\n", "line 1, column 8: x").unwrap();
        assert!(inline.starts_with("line 1: peer = { … } must be a [[peer]] table"), "{inline}");
    }

    #[test]
    fn a_missing_or_doubled_server_table_is_named_as_such() {
        let missing = "line 1, column 1: missing field `server`";
        assert!(client_mistake("routes = []\n", missing).unwrap().starts_with("no [server] table: add one"));
        assert!(client_mistake("routes = []\n", "line 1, column 10: bad routes").is_none());
        let msg = client_mistake("routes = []\n[[server]]\naddress = \"x\"\n", "line 2, column 1: x").unwrap();
        assert!(msg.starts_with("line 2: [[server]] must be written [server]"), "{msg}");
        assert!(client_mistake("[server]\naddress = \"x\"\n", "line 2, column 11: x").is_none());
    }
}
