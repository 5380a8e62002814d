//! Where a host's tags come from when a detection is decided: the tags operators set (the
//! service's records), an inventory (a file of host → tags), and, only where a setting says so,
//! the detection's own `device.groups[].name`. One function for `cordon serve` and `cordon rules
//! test --events`, so that a replay decides what production decides. Pure.

use std::collections::HashMap;

use crate::event::Event;

/// The configured sources of host tags besides the operators'.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagSources {
    /// Tags by host id.
    inventory: HashMap<String, Vec<String>>,
    /// Also the detection's `device.groups[].name` (whoever writes detections then decides
    /// protection and profiles: off unless configured).
    from_events: bool,
}

impl TagSources {
    #[must_use]
    pub fn new(inventory: HashMap<String, Vec<String>>, from_events: bool) -> TagSources {
        TagSources { inventory, from_events }
    }

    /// The host's tags for `event`: `operator_tags`, the inventory's, and the event's groups
    /// where configured; sorted, each once.
    #[must_use]
    pub fn tags_for(&self, event: &Event, operator_tags: &[String]) -> Vec<String> {
        let mut tags: Vec<String> = operator_tags.to_vec();
        if let Some(listed) = self.inventory.get(event.host()) {
            tags.extend(listed.iter().cloned());
        }
        if self.from_events {
            tags.extend(event.device_group_names());
        }
        tags.sort();
        tags.dedup();
        tags
    }

    /// How many hosts the inventory lists.
    #[must_use]
    pub fn inventory_len(&self) -> usize {
        self.inventory.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(groups: &[&str]) -> Event {
        let groups: Vec<serde_json::Value> = groups.iter().map(|g| serde_json::json!({"name": g})).collect();
        Event::from_json(serde_json::json!({
            "time": 0, "severity_id": 5, "device": {"uid": "plc-9", "groups": groups}, "finding_info": {"uid": "e"}
        }))
        .unwrap()
    }

    #[test]
    fn tags_come_from_operators_the_inventory_and_events_only_when_configured() {
        let inventory = HashMap::from([("plc-9".to_owned(), vec!["plc".to_owned(), "line-3".to_owned()])]);
        let sources = TagSources::new(inventory.clone(), false);
        let operators = ["line-3".to_owned(), "audited".to_owned()];
        assert_eq!(sources.tags_for(&event(&["ics"]), &operators), ["audited", "line-3", "plc"]);
        assert_eq!(TagSources::default().tags_for(&event(&["ics"]), &[]), Vec::<String>::new(), "no event tags by default");
        let from_events = TagSources::new(inventory, true);
        assert_eq!(from_events.tags_for(&event(&["ics"]), &[]), ["ics", "line-3", "plc"]);
    }
}
