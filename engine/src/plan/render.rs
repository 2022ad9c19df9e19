//! Human output: the services table (as the seed printed it) and `+ ~ -` plan lines.

use super::{Plan, Step};
use crate::compile::{Listener, ServiceView};
use crate::model::Endpoint;
use planners::{Action, Change, PortalRule};
use std::fmt::Write;

/// `NAME VIP PORT PROXY ENDPOINTS`, one line per service port.
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
                match &port.name {
                    Some(name) => format!("{}:{name}", service.name),
                    None => service.name.clone(),
                },
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
                service.name.clone(),
                vip,
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn endpoints(list: &[Endpoint]) -> String {
    if list.is_empty() {
        return "(none ready)".into();
    }
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn action(action: &Action) -> String {
    match action {
        Action::Redirect { to_port } => format!("redirect :{to_port}"),
        Action::DnatLocal { to } => format!("dnat {to}"),
        Action::Balance {
            endpoints,
            affinity_seconds,
        } => {
            let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
            match affinity_seconds {
                Some(s) => format!("dnat {} (client-ip affinity {s}s)", list.join(", ")),
                None => format!("dnat {}", list.join(", ")),
            }
        }
        Action::Reject => "reject (no endpoints)".to_string(),
    }
}

fn rule(rule: &PortalRule) -> String {
    format!(
        "rule {} -> {}  # {}",
        rule.key,
        action(&rule.action),
        rule.comment
    )
}

fn listener(key: &crate::compile::ListenerKey, l: &Listener) -> String {
    let affinity = l
        .affinity_seconds
        .map(|s| format!(" (ClientIP affinity {s}s)"))
        .unwrap_or_default();
    format!(
        "listener {key}  {} ({}:{}) -> {}{affinity}",
        l.name,
        l.vip,
        l.service_port,
        endpoints(&l.endpoints)
    )
}

/// One line per step, then the summary line.
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
                        old.name, old.vip, old.service_port, new.name, new.vip, new.service_port
                    ));
                }
                format!("~ listener {key}  {}: {}", new.name, what.join("; "))
            }
            Step::CloseListener { key, listener: l } => format!("- {}", listener(key, l)),
            Step::Kernel(change) => match change {
                Change::AddScaffold { scaffold } => format!("+ {scaffold}"),
                Change::RemoveScaffold { scaffold } => format!("- {scaffold}"),
                Change::AddRule { rule: r } => format!("+ {}", rule(r)),
                Change::RemoveRule { rule: r } => format!("- {}", rule(r)),
                Change::ReplaceRule { old, new } => format!(
                    "~ rule {}: {} => {}  # {}",
                    new.key,
                    action(&old.action),
                    action(&new.action),
                    new.comment
                ),
                Change::RemoveStray { stray } => {
                    format!("- stray rule in {}: {}", stray.chain, stray.text)
                }
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
