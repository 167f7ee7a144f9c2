//! An MX answer (RFC 5321 §5.1, RFC 7505), sans-IO: which hosts to try, by preference, or
//! that the domain takes no mail (null MX). The control plane's resolver (`src/dns.rs`) hands
//! the records over and looks up each host's addresses afterwards.

use super::rollup::MxSet;

/// Exchange names longer than a domain name can be are dropped (RFC 1035 §2.3.4).
pub const EXCHANGE_BYTES_MAX: usize = 255;

/// What an MX answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// RFC 7505: a single MX of "." — the domain accepts no mail.
    NullMx,
    /// Host names by preference level, most preferred first; hosts in one level in the
    /// answer's order after sorting (equal preferences are for the caller to spread).
    Levels(Vec<Vec<String>>),
}

/// The plan for an answer's `(preference, exchange)` records, and the MX set (lower-cased,
/// without the trailing dot, sorted) that MX rollup compares.
pub fn plan(records: &[(u16, String)]) -> (MxPlan, MxSet) {
    if let [(_, only)] = records {
        if only == "." || only.is_empty() {
            return (MxPlan::NullMx, Vec::new());
        }
    }
    let mut set: MxSet = records
        .iter()
        .map(|(pref, host)| (*pref, host.trim_end_matches('.').to_ascii_lowercase()))
        .filter(|(_, host)| !host.is_empty() && host.len() <= EXCHANGE_BYTES_MAX)
        .collect();
    set.sort();
    set.dedup();
    let mut levels: Vec<Vec<String>> = Vec::new();
    let mut last_pref = None;
    for (pref, host) in &set {
        if last_pref != Some(*pref) {
            levels.push(Vec::new());
            last_pref = Some(*pref);
        }
        if let Some(level) = levels.last_mut() {
            level.push(host.clone());
        }
    }
    (MxPlan::Levels(levels), set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, h)| (*p, h.to_string())).collect()
    }

    #[test]
    fn levels_by_preference_and_the_null_mx_rfc7505() {
        let (plan, set) = plan(&r(&[(20, "B.example."), (10, "a.example."), (20, "c.example"), (10, "a.example")]));
        assert_eq!(plan, MxPlan::Levels(vec![vec!["a.example".into()], vec!["b.example".into(), "c.example".into()]]));
        assert_eq!(set, r(&[(10, "a.example"), (20, "b.example"), (20, "c.example")]));
        assert_eq!(super::plan(&r(&[(0, ".")])).0, MxPlan::NullMx);
        assert_eq!(super::plan(&r(&[(0, "")])).0, MxPlan::NullMx);
        // A "." among real hosts is no null MX (RFC 7505 §3): it is skipped.
        assert_eq!(super::plan(&r(&[(0, "."), (10, "a.example")])).0, MxPlan::Levels(vec![vec!["a.example".into()]]));
        assert_eq!(super::plan(&[]).0, MxPlan::Levels(vec![]));
    }
}
