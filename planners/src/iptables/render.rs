//! Rendering portald's state and changes as `iptables-restore` text.

use super::tokenize::save_quote;
use super::{chain, hook_chain, hook_comment, TABLE};
use crate::{Action, Change, NatState, Path, PortalRule, Scaffold, StrayRule};
use std::fmt::Write as _;

/// A portal rule's match and target, without the `-A CHAIN` in front, in `iptables-save`'s
/// own spelling and option order.
pub fn rule_spec(rule: &PortalRule) -> String {
    let key = &rule.key;
    let proto = key.protocol.as_str();
    let mut spec = format!(
        "-d {}/32 -p {proto} -m comment --comment {} -m {proto} --dport {}",
        key.vip,
        save_quote(rule.comment.as_str()),
        key.port
    );
    match &rule.action {
        Action::Redirect { to_port } => {
            let _ = write!(spec, " -j REDIRECT --to-ports {to_port}");
        }
        Action::DnatLocal { to } => {
            let _ = write!(spec, " -j DNAT --to-destination {to}");
        }
    }
    spec
}

/// A hook's match and target, without the chain it sits in.
pub fn hook_spec(path: Path) -> String {
    format!(
        "-m comment --comment {} -j {}",
        save_quote(hook_comment(path)),
        chain(path)
    )
}

/// A chain declaration; only ever rendered for chains that do not exist yet, since
/// `iptables-restore --noflush` flushes an existing chain it sees declared.
fn declaration(path: Path) -> String {
    format!(":{} - [0:0]", chain(path))
}

/// The owned state as `iptables-save -t nat` would print it, minus the built-in chains and
/// counters: declarations, then hooks (built-in chains first, in kernel order), then the
/// rules of each owned chain in key order.
pub fn state(state: &NatState) -> String {
    let mut out = format!("*{TABLE}\n");
    for path in Path::ALL {
        if state.scaffold.contains(&Scaffold::Chain(path)) {
            let _ = writeln!(out, "{}", declaration(path));
        }
    }
    for path in Path::ALL {
        if state.scaffold.contains(&Scaffold::Hook(path)) {
            let _ = writeln!(out, "-A {} {}", hook_chain(path), hook_spec(path));
        }
    }
    for path in Path::ALL {
        for rule in state.rules.values().filter(|r| r.key.path == path) {
            let _ = writeln!(out, "-A {} {}", chain(path), rule_spec(rule));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// The `-D` line that deletes a stray. Its text is the dump's `-A CHAIN spec` line, or just
/// the spec; either way the rule is named by its full spec, which `-D` matches exactly.
fn delete_stray(stray: &StrayRule) -> String {
    let text = stray.text.trim();
    let spec = text
        .strip_prefix("-A ")
        .and_then(|rest| rest.trim_start().split_once(' '))
        .map(|(_, spec)| spec.trim_start())
        .unwrap_or(text);
    format!("-D {} {spec}", stray.chain)
}

/// One change as batch lines, in the order the kernel must see them.
fn change_lines(change: &Change, out: &mut Vec<String>) {
    let add = |rule: &PortalRule| format!("-A {} {}", chain(rule.key.path), rule_spec(rule));
    let del = |rule: &PortalRule| format!("-D {} {}", chain(rule.key.path), rule_spec(rule));
    match change {
        Change::AddScaffold {
            scaffold: Scaffold::Chain(path),
        } => out.push(declaration(*path)),
        Change::AddScaffold {
            scaffold: Scaffold::Hook(path),
        } => out.push(format!("-I {} 1 {}", hook_chain(*path), hook_spec(*path))),
        Change::RemoveScaffold {
            scaffold: Scaffold::Chain(path),
        } => out.push(format!("-X {}", chain(*path))),
        Change::RemoveScaffold {
            scaffold: Scaffold::Hook(path),
        } => out.push(format!("-D {} {}", hook_chain(*path), hook_spec(*path))),
        Change::AddRule { rule } => out.push(add(rule)),
        Change::RemoveRule { rule } => out.push(del(rule)),
        // Portal rules never overlap (each catches its own VIP, protocol and port), so their
        // order inside a chain is free and a replace can be a delete plus an append.
        Change::ReplaceRule { old, new } => {
            out.push(del(old));
            out.push(add(new));
        }
        Change::RemoveStray { stray } => out.push(delete_stray(stray)),
    }
}

/// The batch for `iptables-restore --noflush`, one transaction, changes in the given order.
pub fn batch(changes: &[Change]) -> String {
    if changes.is_empty() {
        return String::new();
    }
    let mut lines = Vec::new();
    for change in changes {
        change_lines(change, &mut lines);
    }
    let mut out = format!("*{TABLE}\n");
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Comment, PortalKey, Protocol};

    fn apache(path: Path, action: Action) -> PortalRule {
        PortalRule {
            key: PortalKey {
                path,
                vip: "10.11.0.1".parse().unwrap(),
                protocol: Protocol::Tcp,
                port: 12345,
            },
            comment: Comment::new("default/apache-service:12345").unwrap(),
            action,
        }
    }

    #[test]
    fn rule_spec_is_spelled_as_iptables_save_prints_it() {
        let redirect = apache(Path::Container, Action::Redirect { to_port: 33945 });
        assert_eq!(
            rule_spec(&redirect),
            "-d 10.11.0.1/32 -p tcp -m comment --comment \"default/apache-service:12345\" \
             -m tcp --dport 12345 -j REDIRECT --to-ports 33945"
        );
        let dnat = apache(
            Path::Host,
            Action::DnatLocal {
                to: "127.0.0.1:33945".parse().unwrap(),
            },
        );
        assert_eq!(
            rule_spec(&dnat),
            "-d 10.11.0.1/32 -p tcp -m comment --comment \"default/apache-service:12345\" \
             -m tcp --dport 12345 -j DNAT --to-destination 127.0.0.1:33945"
        );
    }

    #[test]
    fn stray_deletion_accepts_the_dump_line_or_the_bare_spec() {
        let from_dump = StrayRule {
            chain: "PORTAL-HOST".into(),
            text: "-A PORTAL-HOST -p tcp -j ACCEPT".into(),
        };
        let bare = StrayRule {
            chain: "PORTAL-HOST".into(),
            text: "-p tcp -j ACCEPT".into(),
        };
        assert_eq!(delete_stray(&from_dump), "-D PORTAL-HOST -p tcp -j ACCEPT");
        assert_eq!(delete_stray(&bare), "-D PORTAL-HOST -p tcp -j ACCEPT");
    }

    #[test]
    fn an_empty_change_list_renders_as_an_empty_batch() {
        assert_eq!(batch(&[]), "");
    }
}
