//! Every directive PowerMTA documents, by the block it is written in: the list in
//! `config/powermta-directives.txt` (the PowerMTA 5.0 User's Guide's directive index and
//! headings, then directives of other versions that real configurations carry). A name on
//! it is never a start-up error; a name on no list and in no table of sluice's is a typo.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// The list, as shipped.
pub const LIST: &str = include_str!("../powermta-directives.txt");

/// Why each directive sluice accepts and ignores is safe to ignore, or what ignoring it
/// changes (`config/ignored-directives.txt`).
pub const IGNORED: &str = include_str!("../ignored-directives.txt");

/// One line of `IGNORED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub scope: String,
    /// A name, a family (`http-*`), or `*`; a block as `<name>`.
    pub pattern: String,
    /// Ignoring it changes what mail does (not implemented yet); else nothing a recipient
    /// or receiver sees changes.
    pub differs: bool,
    pub why: String,
}

impl Ignored {
    fn matches(&self, scope: &str, name: &str, block: bool) -> bool {
        let name = if block { format!("<{name}>") } else { name.to_string() };
        self.scope == scope
            && match self.pattern.strip_suffix('*') {
                Some("") => true,
                Some(prefix) => name.starts_with(prefix),
                None => self.pattern == name,
            }
    }
}

/// The lines of `IGNORED` (parsed once).
pub fn ignored() -> &'static [Ignored] {
    static IGNORED_LINES: OnceLock<Vec<Ignored>> = OnceLock::new();
    IGNORED_LINES.get_or_init(|| {
        IGNORED
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let mut parts = l.splitn(3, '|').map(str::trim);
                let (at, kind, why) =
                    (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (scope, pattern) = at.split_once(' ').expect("`scope name | kind | why` lines");
                assert!(
                    kind == "same" || kind == "differs",
                    "ignored-directives.txt: `{kind}` is neither same nor differs"
                );
                Ignored {
                    scope: scope.into(),
                    pattern: pattern.trim().into(),
                    differs: kind == "differs",
                    why: why.into(),
                }
            })
            .collect()
    })
}

/// Why `name` (a block when `block`) in `scope` is ignored: the first line that matches.
pub fn why_ignored(scope: &str, name: &str, block: bool) -> Option<&'static Ignored> {
    ignored().iter().find(|i| i.matches(scope, name, block))
}

/// Where an entry of the list comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// The PowerMTA 5.0 User's Guide.
    Guide,
    /// A block of the Guide (where it may be opened).
    Block,
    /// Another PowerMTA version, seen in real configurations.
    OtherVersion,
}

/// One entry: a directive (or block) name, the scope it is written in, where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub scope: String,
    pub name: String,
    pub origin: Origin,
}

pub struct Known {
    entries: Vec<Entry>,
    directives: BTreeMap<String, BTreeSet<String>>,
    blocks: BTreeMap<String, BTreeSet<String>>,
}

/// The parsed list (parsed once).
pub fn known() -> &'static Known {
    static KNOWN: OnceLock<Known> = OnceLock::new();
    KNOWN.get_or_init(|| parse(LIST))
}

fn parse(text: &str) -> Known {
    let mut origin = Origin::Guide;
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match line {
            "[guide-5.0]" => origin = Origin::Guide,
            "[blocks]" => origin = Origin::Block,
            "[other-versions]" => origin = Origin::OtherVersion,
            _ => {
                let (scope, name) = line.split_once(' ').expect("`scope name` lines");
                entries.push(Entry { scope: scope.to_string(), name: name.trim().to_string(), origin });
            }
        }
    }
    let mut directives: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut blocks: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in &entries {
        let map = if e.origin == Origin::Block { &mut blocks } else { &mut directives };
        map.entry(e.name.clone()).or_default().insert(e.scope.clone());
    }
    Known { entries, directives, blocks }
}

impl Known {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Is `name` a PowerMTA directive of `scope`?
    pub fn directive(&self, scope: &str, name: &str) -> bool {
        self.directives.get(name).is_some_and(|s| s.contains(scope))
    }

    /// Is `<name>` a PowerMTA block that may be opened in `scope`?
    pub fn block(&self, scope: &str, name: &str) -> bool {
        self.blocks.get(name).is_some_and(|s| s.contains(scope))
    }

    /// The scopes PowerMTA has `name` in (as a directive, or as a block when `block`).
    pub fn scopes_of(&self, name: &str, block: bool) -> Vec<&str> {
        let map = if block { &self.blocks } else { &self.directives };
        map.get(name).map(|s| s.iter().map(String::as_str).collect()).unwrap_or_default()
    }

    /// Every name PowerMTA has in `scope` (directives and blocks), for hints.
    pub fn names_in<'a>(&'a self, scope: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries.iter().filter(move |e| e.scope == scope).map(|e| e.name.as_str())
    }
}

/// The README's table of PowerMTA directives: which sluice reads, which it accepts and
/// ignores (with a warning), and sluice's own. Generated from the directive tables and the
/// list, so it cannot drift from them (`sluice directives` prints it; a test compares).
pub fn directives_markdown() -> String {
    let k = known();
    let tables = crate::directives::tables();
    // `include` and `domain-macro` are the grammar's (crate::ast), read in every block.
    let reads = |scope: &str, name: &str, block: bool| {
        (!block && (name == "include" || name == "domain-macro"))
            || tables.iter().any(|(s, d, b)| *s == scope && if block { b.contains(&name) } else { d.contains(&name) })
    };
    let mut scopes: Vec<&str> = k.entries().iter().map(|e| e.scope.as_str()).collect();
    scopes.sort_unstable();
    scopes.dedup();
    scopes.sort_by_key(|s| (*s != "global", *s != "source", *s != "domain", *s));
    let shown = |name: &str, block: bool| if block { format!("`<{name}>`") } else { format!("`{name}`") };
    let mut read = String::new();
    let mut unread = String::new();
    for scope in &scopes {
        let mut yes = Vec::new();
        let mut no = Vec::new();
        let mut names: Vec<(&str, bool)> = k
            .entries()
            .iter()
            .filter(|e| e.scope == *scope)
            .map(|e| (e.name.as_str(), e.origin == Origin::Block))
            .collect();
        names.sort_unstable();
        names.dedup();
        for (name, block) in names {
            if reads(scope, name, block) {
                yes.push(shown(name, block));
            } else {
                no.push((shown(name, block), why_ignored(scope, name, block)));
            }
        }
        let place = if *scope == "global" { "global".to_string() } else { format!("`<{scope}>`") };
        if !yes.is_empty() {
            read.push_str(&format!("| {place} | {} |\n", yes.join(", ")));
        }
        // One row per reason, in the order of the reasons' file.
        let mut rows: Vec<(usize, Vec<String>)> = Vec::new();
        for (name, why) in no {
            let at = why.and_then(|w| ignored().iter().position(|i| std::ptr::eq(i, w))).unwrap_or(usize::MAX);
            match rows.iter_mut().find(|(a, _)| *a == at) {
                Some((_, names)) => names.push(name),
                None => rows.push((at, vec![name])),
            }
        }
        rows.sort_by_key(|(at, _)| *at);
        for (at, names) in rows {
            let why = match ignored().get(at) {
                Some(i) if i.differs => format!("**not yet, and mail differs:** {}", i.why),
                Some(i) => format!("changes nothing a receiver sees: {}", i.why),
                None => "**no reason given** (config/ignored-directives.txt)".to_string(),
            };
            unread.push_str(&format!("| {place} | {} | {why} |\n", names.join(", ")));
        }
    }
    let mut own = String::new();
    for (scope, directives, blocks) in &tables {
        let mine: Vec<String> = directives
            .iter()
            .filter(|d| !k.directive(scope, d))
            .map(|d| shown(d, false))
            .chain(blocks.iter().filter(|b| !k.block(scope, b)).map(|b| shown(b, true)))
            .collect();
        if !mine.is_empty() {
            let place = if *scope == "global" { "global".to_string() } else { format!("`<{scope}>`") };
            own.push_str(&format!("| {place} | {} |\n", mine.join(", ")));
        }
    }
    format!(
        "#### Read and followed\n\n| block | directives |\n|---|---|\n{read}\n\
         #### Accepted and ignored, with a warning at their line\n\n\
         Each with why ignoring it is safe, or (**not yet**) what mail does differently until it is implemented.\n\n\
         | block | directives | ignoring them |\n|---|---|---|\n{unread}\n\
         #### sluice's own (no PowerMTA equivalent)\n\n| block | directives |\n|---|---|\n{own}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_holds_the_guide_and_other_versions() {
        let k = known();
        assert!(k.entries().len() > 400, "{}", k.entries().len());
        assert!(k.directive("domain", "max-smtp-out"));
        assert!(k.directive("global", "run-as-root"));
        assert!(k.directive("acct-file", "move-interval"));
        assert!(k.directive("global", "sync-msg-create"), "other versions");
        assert!(k.block("global", "mx-rollup-list"));
        assert!(k.block("virtual-mta", "domain"));
        assert!(!k.directive("domain", "max-smtp-outt"));
        assert_eq!(k.scopes_of("domain-key", false), ["domain-key-list", "global", "virtual-mta", "virtual-mta-pool"]);
    }
}
