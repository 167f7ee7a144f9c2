//! What a `<domain>` or `<source>` block sets, kept as a list of setters so that blocks merge
//! the way PowerMTA merges them: from the most general match to the most specific, each
//! block changing only what it names.
//!
//! `<domain>` patterns (PowerMTA User's Guide 3.3.10): `*` matches every domain, `NAME` that
//! domain only, `*.NAME` its proper subdomains, `[*.]NAME` the domain and its subdomains.
//! `<source>` rules: a CIDR matches the addresses in it; the rules matching one address are
//! nested, applied from the shortest prefix to the longest; a named `<source NAME>` applies on
//! top when a listener (`source=NAME`) or an SMTP user (`source NAME`) asks for it.

use crate::model::{DomainSettings, SourcePolicy};
use std::collections::HashMap;
use std::sync::Arc;

/// One directive's effect on the settings it is merged into.
pub(crate) type Setter<T> = Arc<dyn Fn(&mut T) + Send + Sync>;

/// The directives of one block, in the order written.
#[derive(Clone)]
pub(crate) struct Overrides<T> {
    sets: Vec<Setter<T>>,
}

impl<T> Default for Overrides<T> {
    fn default() -> Self {
        Overrides { sets: Vec::new() }
    }
}

impl<T> std::fmt::Debug for Overrides<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Overrides({} settings)", self.sets.len())
    }
}

impl<T> Overrides<T> {
    pub(crate) fn set(&mut self, f: impl Fn(&mut T) + Send + Sync + 'static) {
        self.sets.push(Arc::new(f));
    }

    pub(crate) fn apply(&self, to: &mut T) {
        for s in &self.sets {
            s(to);
        }
    }

    /// Another block's settings after these (a later block for the same pattern).
    pub(crate) fn extend(&mut self, other: Overrides<T>) {
        self.sets.extend(other.sets);
    }
}

/// What one `<domain>` block sets; `queue_to` also kept apart, for the per-message lookup.
#[derive(Debug, Clone, Default)]
pub(crate) struct DomainOverrides {
    pub(crate) sets: Overrides<DomainSettings>,
    pub(crate) queue_to: Option<String>,
}

impl DomainOverrides {
    pub(crate) fn set(&mut self, f: impl Fn(&mut DomainSettings) + Send + Sync + 'static) {
        self.sets.set(f);
    }
}

/// `<domain>` blocks at one level (global, a VMTA, a pool), by pattern kind.
#[derive(Debug, Clone, Default)]
pub(crate) struct DomainBlocks {
    /// `<domain *>`.
    wildcard: DomainOverrides,
    /// `<domain NAME>`.
    exact: HashMap<String, DomainOverrides>,
    /// `<domain *.NAME>`: proper subdomains of NAME.
    below: HashMap<String, DomainOverrides>,
    /// `<domain [*.]NAME>`: NAME and its subdomains.
    at_or_below: HashMap<String, DomainOverrides>,
}

/// A `<domain>` pattern, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DomainPattern {
    Any,
    Exact(String),
    Below(String),
    AtOrBelow(String),
}

impl DomainPattern {
    /// `*`, `NAME`, `*.NAME`, `[*.]NAME` (a trailing dot dropped, lower case). Reserved names in
    /// braces (`{gmImprinter}`, `{bounceProcessor}`) are exact names of PowerMTA's own queues.
    pub(crate) fn parse(v: &str) -> Result<DomainPattern, String> {
        let v = v.trim().trim_end_matches('.').to_ascii_lowercase();
        let name = |n: &str| -> Result<String, String> {
            if n.is_empty() || n.contains(['*', '[', ']', ' ', '@']) {
                return Err(format!("`{v}` is not a domain pattern; write NAME, *.NAME, [*.]NAME or *"));
            }
            Ok(n.to_string())
        };
        if v == "*" {
            Ok(DomainPattern::Any)
        } else if let Some(rest) = v.strip_prefix("[*.]") {
            name(rest).map(DomainPattern::AtOrBelow)
        } else if let Some(rest) = v.strip_prefix("*.") {
            name(rest).map(DomainPattern::Below)
        } else if v.starts_with('{') && v.ends_with('}') {
            Ok(DomainPattern::Exact(v))
        } else {
            name(&v).map(DomainPattern::Exact)
        }
    }

    /// Does this pattern match `domain` (lower case)?
    pub(crate) fn matches(&self, domain: &str) -> bool {
        let below =
            |n: &str| domain.len() > n.len() && domain.ends_with(n) && domain[..domain.len() - n.len()].ends_with('.');
        match self {
            DomainPattern::Any => true,
            DomainPattern::Exact(n) => domain == n,
            DomainPattern::Below(n) => below(n),
            DomainPattern::AtOrBelow(n) => domain == n || below(n),
        }
    }
}

impl DomainBlocks {
    /// A block's settings under its pattern (after any earlier block with the same pattern).
    pub(crate) fn add(&mut self, pattern: DomainPattern, o: DomainOverrides) {
        let slot = match pattern {
            DomainPattern::Any => &mut self.wildcard,
            DomainPattern::Exact(n) => self.exact.entry(n).or_default(),
            DomainPattern::Below(n) => self.below.entry(n).or_default(),
            DomainPattern::AtOrBelow(n) => self.at_or_below.entry(n).or_default(),
        };
        slot.sets.extend(o.sets);
        if o.queue_to.is_some() {
            slot.queue_to = o.queue_to;
        }
    }

    /// The blocks that match `domain`, from the most general to the most specific: `*`, then
    /// for each parent from the farthest `[*.]P` and `*.P`, then `[*.]D` and `D` itself.
    fn matching<'a>(&'a self, domain: &'a str) -> impl Iterator<Item = &'a DomainOverrides> + 'a {
        let parents = domain.rmatch_indices('.').map(move |(i, _)| &domain[i + 1..]);
        let below = parents.flat_map(move |p| [self.at_or_below.get(p), self.below.get(p)]);
        std::iter::once(Some(&self.wildcard))
            .chain(below)
            .chain([self.at_or_below.get(domain), self.exact.get(domain)])
            .flatten()
    }

    pub(crate) fn apply(&self, domain: &str, settings: &mut DomainSettings) {
        for o in self.matching(domain) {
            o.sets.apply(settings);
        }
    }

    /// The most specific `queue-to` for `domain` (per message: no full settings built).
    pub(crate) fn queue_to<'a>(&'a self, domain: &'a str) -> Option<&'a String> {
        self.matching(domain).filter_map(|o| o.queue_to.as_ref()).last()
    }
}

/// What one `<source>` block sets.
pub(crate) type SourceOverrides = Overrides<SourcePolicy>;

#[cfg(test)]
mod tests {
    use super::*;

    fn block(max: u32) -> DomainOverrides {
        let mut o = DomainOverrides::default();
        o.set(move |s| s.max_smtp_out = max);
        o
    }

    #[test]
    fn patterns_match_as_the_guide_says() {
        let p = |v: &str| DomainPattern::parse(v).unwrap();
        assert!(p("discard.port25.com").matches("discard.port25.com"));
        assert!(!p("port25.com").matches("a.port25.com"), "a plain name is that domain only");
        assert!(p("*.port25.com").matches("a.port25.com"));
        assert!(!p("*.port25.com").matches("port25.com"));
        assert!(!p("*.port25.com").matches("xport25.com"));
        assert!(p("[*.]port25.com").matches("port25.com") && p("[*.]port25.com").matches("a.b.port25.com"));
        assert!(p("*").matches("anything.test"));
        assert_eq!(p("{gmImprinter}"), DomainPattern::Exact("{gmimprinter}".into()));
        assert!(DomainPattern::parse("a b").is_err());
    }

    #[test]
    fn blocks_merge_from_general_to_specific() {
        let mut b = DomainBlocks::default();
        b.add(DomainPattern::Any, block(1));
        b.add(DomainPattern::AtOrBelow("port25.com".into()), block(2));
        b.add(DomainPattern::Below("port25.com".into()), block(3));
        b.add(DomainPattern::Exact("discard.port25.com".into()), block(4));
        let max = |d: &str| {
            let mut s = DomainSettings::default();
            b.apply(d, &mut s);
            s.max_smtp_out
        };
        assert_eq!(max("other.test"), 1);
        assert_eq!(max("port25.com"), 2);
        assert_eq!(max("www.port25.com"), 3);
        assert_eq!(max("discard.port25.com"), 4);
    }
}
