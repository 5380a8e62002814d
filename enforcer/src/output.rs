//! What `cordon-enforcer status` and `history` print for a person (`--json` prints the same
//! data as JSON).

use crate::{isolation, store};

/// The isolation, the kernel's counters, the recent trail, the pins and the agent, one per line.
pub fn print_status(status: &isolation::Status) {
    if status.isolated {
        let mode = status.mode.unwrap_or(store::Mode::Manual).name();
        println!("{} ({mode})", isolation::ISOLATED_TAG);
        if let Some(expires) = &status.expires_at {
            println!("  lifted at:    {expires}");
        }
        if let Some(started) = &status.started_at {
            println!("  since:        {started}");
        }
        if let Some(reason) = &status.reason {
            println!("  reason:       {reason}");
        }
        println!("  exclusions:   {}", listed(&status.exclusions));
        println!("  management:   {}", listed(&status.management));
        println!("  processes:    {}", listed(&status.allowed_processes));
        println!("  dns / dhcp:   {} / {}", status.allow_dns, status.allow_dhcp);
    } else if status.armed {
        println!("Not isolated (armed: programs loaded, ready to isolate at once).");
    } else {
        println!("Not isolated.");
    }
    let c = &status.counters;
    println!(
        "  counters:     {} packets dropped, {} allowed, {} connects refused, {} raw sockets refused, {} echo requests dropped",
        c.packets_dropped, c.packets_allowed, c.connects_refused, c.raw_sockets_refused, c.echo_requests_dropped
    );
    println!("  cgroup:       {}", status.cgroup.display());
    for entry in &status.history {
        let detail = if entry.detail.is_empty() { String::new() } else { format!(": {}", entry.detail) };
        println!(
            "  history:      {} {} by {}{detail}",
            isolation::format_time(entry.at_unix_ms),
            entry.event,
            entry.actor
        );
    }
    if let Some(attention) = &status.attention {
        println!("  attention:    {attention}");
    }
    println!(
        "  pins:         {}",
        if status.pins_intact { "intact" } else { "MISSING (the isolation is not enforced)" }
    );
    if let Some(agent) = &status.agent {
        let state = match (agent.running, agent.pid) {
            (true, Some(pid)) => format!("running (pid {pid})"),
            _ => "NOT running".to_owned(),
        };
        let kafka = match (&agent.brokers, agent.kafka_connected) {
            (Some(brokers), true) => format!("connected to Kafka ({brokers})"),
            (Some(brokers), false) => format!("NOT connected to Kafka ({brokers})"),
            (None, _) => "no command channel".to_owned(),
        };
        println!("  agent:        {state}, {kafka}");
        if let Some(last) = &agent.last_command {
            println!(
                "  last command: {} {} at {}",
                last.command_id.as_deref().unwrap_or("(unreadable)"),
                last.outcome,
                isolation::format_time(last.at_ms)
            );
        }
        for problem in &agent.problems {
            println!("  problem:      {problem}");
        }
    }
}

/// The whole audit trail, one entry per line: time, event, actor, detail.
pub fn print_history(trail: &[store::AuditEntry]) {
    for entry in trail {
        println!("{}  {:<9} {:<8} {}", isolation::format_time(entry.at_unix_ms), entry.event, entry.actor, entry.detail);
    }
}

/// `items` separated by commas, or `none`.
fn listed<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}
