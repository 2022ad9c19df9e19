//! Human output: the services table (as the seed printed it) and `+ ~ -` plan lines.

use super::{Plan, Step};
use crate::compile::ServiceView;
use crate::escape;
use crate::listeners::Listener;
use crate::model::Endpoint;
use planners::{Action, Change, PortalRule};
use std::fmt::Write;

/// `NAME VIP PORT PROXY ENDPOINTS`, one line per service port. Readable at any size: names
/// are escaped and clipped, a column is at most [`escape::MAX_NAME`] wide and the endpoints
/// show the first [`escape::MAX_ITEMS`] and `... and N more` (the JSON lists them all), so a
/// line stays under [`escape::MAX_LINE`] characters.
pub fn services_table(services: &[ServiceView]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "VIP".to_string(),
        "PORT".to_string(),
        "PROXY".to_string(),
        "ENDPOINTS".to_string(),
    ]];
    for service in services {
        let vip = match (service.headless, service.vip) {
            (true, _) => "None".to_string(),
            (false, Some(vip)) => vip.to_string(),
            (false, None) => "-".to_string(),
        };
        for port in &service.ports {
            rows.push([
                escape::clipped(
                    &match &port.name {
                        Some(name) => format!("{}:{name}", service.name),
                        None => service.name.clone(),
                    },
                    escape::MAX_NAME,
                ),
                vip.clone(),
                format!("{}/{}", port.port, port.protocol),
                port.proxy_port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                endpoints(&port.endpoints),
            ]);
        }
        if service.ports.is_empty() {
            rows.push([
                escape::clipped(&service.name, escape::MAX_NAME),
                vip,
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
    }
    // Padded by hand, not with `{:<w$}`: a width over 65,535 panics in `format!`.
    let widths: Vec<usize> = (0..4)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
                .min(escape::MAX_NAME)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if let Some(width) = widths.get(c) {
                let pad = width.saturating_sub(cell.chars().count()) + 2;
                line.push_str(&" ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// The endpoints of a port or listener for one line: the first few and how many more.
fn endpoints(list: &[Endpoint]) -> String {
    if list.is_empty() {
        return "(none ready)".into();
    }
    escape::list(list, list.len())
}

fn action(action: &Action) -> String {
    match action {
        Action::Redirect { to_port } => format!("redirect :{to_port}"),
        Action::DnatLocal { to } => format!("dnat {to}"),
        Action::Balance {
            endpoints,
            affinity_seconds,
        } => {
            let list = escape::list(endpoints, endpoints.len());
            match affinity_seconds {
                Some(s) => format!("dnat {list} (client-ip affinity {s}s)"),
                None => format!("dnat {list}"),
            }
        }
        Action::Reject => "reject (no endpoints)".to_string(),
    }
}

fn rule(rule: &PortalRule) -> String {
    format!(
        "rule {} -> {}  # {}",
        escape::clipped(&rule.key.to_string(), escape::MAX_NAME),
        action(&rule.action),
        escape::clipped(&rule.comment.to_string(), escape::MAX_NAME)
    )
}

fn listener(key: &crate::listeners::ListenerKey, l: &Listener) -> String {
    let affinity = l
        .affinity_seconds
        .map(|s| format!(" (ClientIP affinity {s}s)"))
        .unwrap_or_default();
    format!(
        "listener {key}  {} ({}:{}) -> {}{affinity}",
        escape::clipped(&l.name, escape::MAX_NAME),
        l.vip,
        l.service_port,
        endpoints(&l.endpoints)
    )
}

/// One line per step, then the summary line. Every name and foreign rule is escaped and
/// clipped, and endpoint lists shortened, as in [`services_table`]: a line stays under
/// [`escape::MAX_LINE`] characters.
pub fn plan_text(plan: &Plan) -> String {
    let mut out = String::new();
    for step in &plan.steps {
        let line = match step {
            Step::OpenListener { key, listener: l } => format!("+ {}", listener(key, l)),
            Step::UpdateListener { key, old, new } => {
                let mut what = Vec::new();
                if old.endpoints != new.endpoints {
                    what.push(format!(
                        "endpoints {} => {}",
                        endpoints(&old.endpoints),
                        endpoints(&new.endpoints)
                    ));
                }
                if old.affinity_seconds != new.affinity_seconds {
                    what.push(format!(
                        "affinity {:?} => {:?}",
                        old.affinity_seconds, new.affinity_seconds
                    ));
                }
                if old.name != new.name
                    || old.vip != new.vip
                    || old.service_port != new.service_port
                {
                    what.push(format!(
                        "serves {} ({}:{}) => {} ({}:{})",
                        escape::clipped(&old.name, escape::MAX_NAME),
                        old.vip,
                        old.service_port,
                        escape::clipped(&new.name, escape::MAX_NAME),
                        new.vip,
                        new.service_port
                    ));
                }
                format!(
                    "~ listener {key}  {}: {}",
                    escape::clipped(&new.name, escape::MAX_NAME),
                    what.join("; ")
                )
            }
            Step::CloseListener { key, listener: l } => format!("- {}", listener(key, l)),
            Step::Kernel(change) => match change {
                Change::AddScaffold { scaffold } => {
                    format!(
                        "+ {}",
                        escape::clipped(&scaffold.to_string(), escape::MAX_TEXT)
                    )
                }
                Change::RemoveScaffold { scaffold } => {
                    format!(
                        "- {}",
                        escape::clipped(&scaffold.to_string(), escape::MAX_TEXT)
                    )
                }
                Change::AddRule { rule: r } => format!("+ {}", rule(r)),
                Change::RemoveRule { rule: r } => format!("- {}", rule(r)),
                Change::ReplaceRule { old, new } => format!(
                    "~ rule {}: {} => {}  # {}",
                    escape::clipped(&new.key.to_string(), escape::MAX_NAME),
                    action(&old.action),
                    action(&new.action),
                    escape::clipped(&new.comment.to_string(), escape::MAX_NAME)
                ),
                Change::RemoveStray { stray } => format!(
                    "- stray rule in {}: {}",
                    escape::clipped(&stray.chain, escape::MAX_NAME),
                    escape::clipped(&stray.text, escape::MAX_TEXT)
                ),
            },
        };
        let _ = writeln!(out, "  {line}");
    }
    if let Some(retire) = &plan.retire {
        let _ = writeln!(
            out,
            "  then remove what portald owns through {} (switching to {}):",
            retire.backend, plan.backend
        );
        for line in plan_text(retire).lines().filter(|l| l.starts_with("  ")) {
            let _ = writeln!(out, "  {line}");
        }
    }
    for beside in &plan.companions {
        let flavour = beside.flavour.map(|f| f.name()).unwrap_or("iptables");
        let _ = writeln!(
            out,
            "  then in {flavour}, beside the {} backend (the forward chain portald keeps where FORWARD drops):",
            plan.backend
        );
        for line in plan_text(beside).lines().filter(|l| l.starts_with("  ")) {
            let _ = writeln!(out, "  {line}");
        }
    }
    if plan.is_empty() {
        out.push_str("No changes: the live state matches the services.\n");
    }
    if plan.held_back > 0 {
        let _ = writeln!(
            out,
            "\n{} removal(s) held back: some files have errors, and what they defined stays in force until they are fixed.",
            plan.held_back
        );
    }
    let _ = writeln!(
        out,
        "\nPlan: {} to add, {} to change, {} to remove.",
        plan.summary.add, plan.summary.change, plan.summary.remove
    );
    out
}
