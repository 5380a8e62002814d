//! Compiles exclusions into the kernel's longest-prefix-match tables. Pure: no I/O. The agent
//! fills its maps with them; `cordon serve` compiles central exclusions with the same function
//! to refuse, up front, what no agent's kernel could hold.
//!
//! An LPM trie answers only with the longest matching prefix, so a rule stored under a short
//! prefix would be hidden for addresses that also fall under a longer one. Each prefix's entry
//! therefore carries every rule whose network covers that prefix ("flattening").

use std::collections::BTreeSet;

use crate::spec::{Direction, Exclusion, Network, Protocol};
use enforcer_common::{
    Rule, RuleList, DIRECTION_IN, DIRECTION_OUT, MAX_PREFIXES, MAX_RULES_PER_PREFIX, OWNER_AGENT, OWNER_ANY,
    PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

/// What the kernel maps must hold: one entry per distinct prefix and family.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RuleTables {
    pub v4: Vec<(Network, RuleList)>,
    pub v6: Vec<(Network, RuleList)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("{count} different exclusions apply to {network}; at most {MAX_RULES_PER_PREFIX} may overlap one network")]
    TooManyOverlapping { network: Network, count: usize },
    #[error("{count} different networks are excluded; at most {MAX_PREFIXES} per address family")]
    TooManyNetworks { count: usize },
}

/// What `allow_dhcp` leaves open: DHCP and `DHCPv6`, client side.
pub fn dhcp_exclusions() -> Vec<Exclusion> {
    ["out,udp,0.0.0.0/0,67", "in,udp,0.0.0.0/0,68", "out,udp,::/0,547", "in,udp,::/0,546"]
        .iter()
        .map(|spec| spec.parse().expect("built-in DHCP exclusions are valid"))
        .collect()
}

/// How many rules of one prefix's list central checks leave to the agent's own channel: its
/// brokers, collectors and resolvers, which only the agent knows, fall under the user's
/// networks too.
pub const RULES_KEPT_FOR_THE_AGENT: usize = 4;

/// `owner`: `OWNER_ANY` (any socket may use it) or `OWNER_AGENT` (the agent's sockets only).
pub fn kernel_rule(exclusion: &Exclusion, owner: u16) -> Rule {
    let protocol = match exclusion.protocol() {
        Protocol::Any => PROTO_ANY,
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Icmp => PROTO_ICMP,
    };
    let directions = match exclusion.direction() {
        Direction::In => DIRECTION_IN,
        Direction::Out => DIRECTION_OUT,
        Direction::Both => DIRECTION_IN | DIRECTION_OUT,
    };
    // No PORTS: every port; the kernel rule then spans its whole range, 0 included.
    let (port_lo, port_hi) = exclusion.ports().map_or((0, u16::MAX), |ports| (ports.first(), ports.last()));
    Rule { protocol, directions, port_lo, port_hi, owner }
}

/// The tables for `shared` exclusions (any socket) and `agent_only` ones (the agent's sockets:
/// its management channel).
pub fn compile(shared: &[Exclusion], agent_only: &[Exclusion]) -> Result<RuleTables, TableError> {
    let mut tables = RuleTables::default();
    for (network, rules) in flatten(shared, agent_only) {
        if rules.len() > MAX_RULES_PER_PREFIX {
            return Err(TableError::TooManyOverlapping { network, count: rules.len() });
        }
        let mut list =
            RuleList { len: u32::try_from(rules.len()).unwrap_or(u32::MAX), ..RuleList::default() };
        list.rules[..rules.len()].copy_from_slice(&rules);
        if network.address().is_ipv6() { &mut tables.v6 } else { &mut tables.v4 }.push((network, list));
    }
    for table in [&tables.v4, &tables.v6] {
        if table.len() > MAX_PREFIXES as usize {
            return Err(TableError::TooManyNetworks { count: table.len() });
        }
    }
    Ok(tables)
}

/// Every excluded network (IPv4 first) with every distinct rule whose network covers it.
fn flatten(shared: &[Exclusion], agent_only: &[Exclusion]) -> Vec<(Network, Vec<Rule>)> {
    let owned: Vec<(&Exclusion, u16)> = shared
        .iter()
        .map(|e| (e, OWNER_ANY))
        .chain(agent_only.iter().map(|e| (e, OWNER_AGENT)))
        .collect();
    let networks: BTreeSet<(bool, Network)> =
        owned.iter().map(|(e, _)| (e.network().address().is_ipv6(), e.network())).collect();
    networks
        .into_iter()
        .map(|(_, network)| {
            let mut rules: Vec<Rule> = Vec::new();
            for (exclusion, owner) in owned.iter().filter(|(e, _)| e.network().covers(network)) {
                let rule = kernel_rule(exclusion, *owner);
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
            (network, rules)
        })
        .collect()
}

/// Whether `exclusions` (with DHCP's when `allow_dhcp`) fit every agent's kernel tables with
/// room for the agent's own channel ([`RULES_KEPT_FOR_THE_AGENT`] per prefix): every problem.
pub fn check_fits(exclusions: &[Exclusion], allow_dhcp: bool) -> Vec<String> {
    let mut all = exclusions.to_vec();
    if allow_dhcp {
        all.extend(dhcp_exclusions());
    }
    let room = MAX_RULES_PER_PREFIX - RULES_KEPT_FOR_THE_AGENT;
    let flattened = flatten(&all, &[]);
    let mut problems: Vec<String> = flattened
        .iter()
        .filter(|(_, rules)| rules.len() > room)
        .map(|(network, rules)| {
            format!(
                "{} different exclusions apply to {network}; at most {room} may overlap one network (the kernel \
                 holds {MAX_RULES_PER_PREFIX}, {RULES_KEPT_FOR_THE_AGENT} of them kept for the agent's own channel){}",
                rules.len(),
                if allow_dhcp { "; DHCP's two count" } else { "" }
            )
        })
        .collect();
    let v6 = flattened.iter().filter(|(network, _)| network.address().is_ipv6()).count();
    for count in [flattened.len() - v6, v6] {
        if count > MAX_PREFIXES as usize {
            problems.push(TableError::TooManyNetworks { count }.to_string());
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exclusions(specs: &[&str]) -> Vec<Exclusion> {
        specs.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn longer_prefixes_inherit_the_rules_of_the_networks_that_cover_them() {
        let tables = compile(&exclusions(&["out,tcp,10.0.0.0/8,443", "out,udp,10.1.0.0/16,53"]), &[]).unwrap();
        assert_eq!(tables.v4.len(), 2);
        let (wide, wide_rules) = &tables.v4[0];
        assert_eq!(wide.to_string(), "10.0.0.0/8");
        assert_eq!(wide_rules.len, 1);
        let (narrow, narrow_rules) = &tables.v4[1];
        assert_eq!(narrow.to_string(), "10.1.0.0/16");
        assert_eq!(narrow_rules.len, 2);
        assert_eq!(narrow_rules.rules[0].protocol, PROTO_TCP);
        assert_eq!(narrow_rules.rules[1].protocol, PROTO_UDP);
    }

    #[test]
    fn the_management_channel_is_the_agents_only() {
        let tables = compile(&exclusions(&["out,tcp,10.0.0.0/8,443"]), &exclusions(&["out,tcp,10.0.0.5/32,9092"]))
            .unwrap();
        let (_, list) = tables.v4.iter().find(|(n, _)| n.to_string() == "10.0.0.5/32").unwrap();
        let owners: Vec<u16> = list.rules[..list.len as usize].iter().map(|r| r.owner).collect();
        // The broker's /32 inherits the shared /8 rule; its own rule is the agent's.
        assert_eq!(owners, vec![OWNER_ANY, OWNER_AGENT]);
    }

    #[test]
    fn families_are_kept_apart_and_duplicates_merged() {
        let tables =
            compile(&exclusions(&["both,any,fd00::/8", "both,any,fd00::/8", "in,tcp,0.0.0.0/0,22"]), &[]).unwrap();
        assert_eq!(tables.v6.len(), 1);
        assert_eq!(tables.v6[0].1.len, 1);
        assert_eq!(tables.v6[0].1.rules[0].directions, DIRECTION_IN | DIRECTION_OUT);
        assert_eq!(tables.v4[0].1.rules[0].port_lo, 22);
    }

    #[test]
    fn too_many_overlapping_rules_is_refused() {
        let specs: Vec<String> = (1..=17).map(|port| format!("out,tcp,10.0.0.0/8,{port}")).collect();
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        let error = compile(&exclusions(&specs), &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "17 different exclusions apply to 10.0.0.0/8; at most 16 may overlap one network"
        );
    }

    #[test]
    fn central_checks_keep_room_for_the_agents_channel_and_count_dhcp() {
        let specs: Vec<String> = (1..=12).map(|port| format!("out,tcp,10.0.0.0/8,{port}")).collect();
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        assert!(check_fits(&exclusions(&specs), false).is_empty());
        // DHCP's 0.0.0.0/0 rules cover 10.0.0.0/8 too: 14 rules there.
        assert_eq!(
            check_fits(&exclusions(&specs), true),
            vec![
                "14 different exclusions apply to 10.0.0.0/8; at most 12 may overlap one network (the kernel holds \
                 16, 4 of them kept for the agent's own channel); DHCP's two count"
            ]
        );
        let specs: Vec<String> = (1..=13).map(|port| format!("out,tcp,192.0.2.0/24,{port}")).collect();
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        assert_eq!(check_fits(&exclusions(&specs), false).len(), 1, "13 on one network is one problem");
    }

    #[test]
    fn a_thousand_disjoint_exclusions_fit() {
        let specs: Vec<String> =
            (0..1000).map(|i| format!("out,tcp,10.{}.{}.0/24,443", i / 256, i % 256)).collect();
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        assert_eq!(compile(&exclusions(&specs), &[]).unwrap().v4.len(), 1000);
    }
}
