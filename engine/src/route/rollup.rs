//! MX rollup: domains whose MX sets (same hosts and preferences) and settings are equal
//! share one queue, so `max-smtp-out` and the rates hold for the receiving provider as a
//! whole. The control plane asks here when a resolution names MX hosts.

use std::collections::HashMap;

/// A domain's MX records as (preference, lower-case host), sorted: what MX rollup compares.
pub type MxSet = Vec<(u16, String)>;

/// MX rollup: domains whose MX sets (and settings) are equal share the queue of the first
/// of them to resolve, its leader. A leader whose own MX set changes leaves its group.
#[derive(Default)]
pub struct Rollups {
    leaders: HashMap<(MxSet, String), String>,
    led: HashMap<String, (MxSet, String)>,
}

impl Rollups {
    /// The domain whose queue `domain`'s mail joins, given its MX set and settings
    /// fingerprint: itself when it leads (or starts) the group.
    pub fn leader(&mut self, domain: &str, key: (MxSet, String)) -> String {
        if self.led.get(domain).is_some_and(|k| *k != key) {
            let old = self.led.remove(domain).expect("checked");
            self.leaders.remove(&old);
        }
        let leader = self.leaders.entry(key.clone()).or_insert_with(|| domain.to_string()).clone();
        if leader == domain {
            self.led.insert(leader.clone(), key);
        }
        leader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hosts: &[&str], settings: &str) -> (MxSet, String) {
        (hosts.iter().map(|h| (10, h.to_string())).collect(), settings.to_string())
    }

    #[test]
    fn rollup_groups_equal_mx_sets_and_settings_under_the_first() {
        let mut r = Rollups::default();
        assert_eq!(r.leader("a.test", key(&["mx.shared"], "s")), "a.test");
        assert_eq!(r.leader("b.test", key(&["mx.shared"], "s")), "a.test");
        assert_eq!(r.leader("c.test", key(&["mx.shared"], "other settings")), "c.test");
        assert_eq!(r.leader("d.test", key(&["mx.shared", "mx2.shared"], "s")), "d.test");
        assert_eq!(r.leader("a.test", key(&["mx.shared"], "s")), "a.test", "stable");
        // The leader moves away: the group gets a new leader, and the old one leads its own.
        assert_eq!(r.leader("a.test", key(&["mx.elsewhere"], "s")), "a.test");
        assert_eq!(r.leader("b.test", key(&["mx.shared"], "s")), "b.test");
        assert_eq!(r.leader("e.test", key(&["mx.shared"], "s")), "b.test");
    }
}
