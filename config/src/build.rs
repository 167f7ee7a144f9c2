//! From the parsed tree to a `Config`: each block's directives looked up in its scope's table
//! (`crate::directives`), every problem recorded and the walk carried on, so one run reports
//! them all. A name in no table but on PowerMTA's list (`crate::known`) is a warning; a name
//! on neither is an error with the nearest name as a hint.

use crate::ast::{Node, Span};
use crate::known::known;
use crate::model::*;
use crate::overrides::SourceOverrides;
use crate::units::{self, Cidr, Rate};
use crate::{Config, ConfigError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One directive as a table's parser sees it.
pub(crate) struct Line<'a> {
    pub name: &'a str,
    pub args: &'a [String],
    pub span: &'a Span,
}

impl Line<'_> {
    pub fn err(&self, message: impl Into<String>, hint: impl Into<String>) -> ConfigError {
        ConfigError::at(self.span, message, hint)
    }

    pub fn value<T>(&self, parsed: Result<T, String>) -> Result<T, ConfigError> {
        parsed.map_err(|m| ConfigError::at(self.span, m, ""))
    }

    /// Exactly one value.
    pub fn one(&self) -> Result<&str, ConfigError> {
        match self.args {
            [v] => Ok(v.as_str()),
            _ => Err(self.err(
                format!("`{}` takes exactly one value, got {}", self.name, self.args.len()),
                format!("write `{} VALUE`", self.name),
            )),
        }
    }

    /// The values as one comma-separated list (`a,b`, `a, b` and `a b` alike).
    pub fn list(&self) -> Vec<String> {
        self.args.join(",").split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_string).collect()
    }

    /// The values as one text (`user-string a b c`).
    pub fn text(&self) -> String {
        self.args.join(" ")
    }

    pub fn bool(&self) -> Result<bool, ConfigError> {
        self.value(units::parse_bool(self.one()?))
    }

    pub fn duration(&self) -> Result<Duration, ConfigError> {
        self.value(units::parse_duration(self.one()?))
    }

    /// A duration that overrides a default kept elsewhere (None: that default).
    pub fn some_duration(&self) -> Result<Option<Duration>, ConfigError> {
        self.duration().map(Some)
    }

    pub fn durations(&self) -> Result<Vec<Duration>, ConfigError> {
        self.value(units::parse_durations(&self.args.join(",")))
    }

    pub fn size(&self) -> Result<u64, ConfigError> {
        self.value(units::parse_size(self.one()?))
    }

    pub fn rate(&self) -> Result<Rate, ConfigError> {
        self.value(units::parse_rate(self.one()?))
    }

    /// A rate limit: `unlimited` is None, `0` lets nothing pass.
    pub fn rate_limit(&self) -> Result<Option<Rate>, ConfigError> {
        self.value(units::parse_rate_limit(self.one()?))
    }

    /// PowerMTA 3's `N` messages an hour (`max-msg-per-hour`): the rate `N/h`.
    pub fn per_hour(&self) -> Result<Option<Rate>, ConfigError> {
        let v = self.one()?;
        let rate = match v.parse::<u32>() {
            Ok(n) => format!("{n}/h"),
            Err(_) => v.to_string(), // `unlimited`, or a rate written as today's
        };
        self.value(units::parse_rate_limit(&rate))
    }

    /// A count where `unlimited` is the largest there is.
    pub fn count_or_unlimited(&self) -> Result<u32, ConfigError> {
        Ok(self.value(units::parse_count_or_unlimited(self.one()?))?.unwrap_or(u32::MAX))
    }

    pub fn count(&self) -> Result<u32, ConfigError> {
        let v = self.one()?;
        v.parse().map_err(|_| self.err(format!("`{v}` is not a whole number"), ""))
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(&self, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let v = self.one()?;
        choices.iter().find(|(w, _)| w.eq_ignore_ascii_case(v)).map(|(_, t)| *t).ok_or_else(|| {
            let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
            self.err(format!("`{}` takes one of {}, not `{v}`", self.name, words.join(", ")), "")
        })
    }

    /// A file named in the config: a relative path is found next to the file naming it.
    pub fn path(&self, path: &str) -> PathBuf {
        relative_to(self.span, path)
    }
}

/// A file named in the config: a relative path is found next to the config file naming it.
pub(crate) fn relative_to(span: &Span, path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    match Path::new(&*span.file).parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
}

/// A block as a table's opener sees it.
pub(crate) struct BlockRef<'a> {
    pub name: &'a str,
    pub arg: Option<&'a str>,
    pub children: &'a [Node],
    pub span: &'a Span,
}

impl BlockRef<'_> {
    /// The block's argument, required.
    pub fn arg(&self, example: &str) -> Result<&str, ConfigError> {
        self.arg.ok_or_else(|| {
            ConfigError::at(
                self.span,
                format!("`<{}>` needs a name", self.name),
                format!("write `<{} {example}>`", self.name),
            )
        })
    }
}

pub(crate) type SetFn<T> = fn(&mut Builder, &mut T, &Line) -> Result<(), ConfigError>;
pub(crate) type OpenFn<T> = fn(&mut Builder, &mut T, &BlockRef) -> Result<(), ConfigError>;

/// A directive sluice reads: its name and its parser.
pub(crate) struct Directive<T: 'static> {
    pub name: &'static str,
    pub set: SetFn<T>,
}

/// A block sluice reads inside another.
pub(crate) struct Block<T: 'static> {
    pub name: &'static str,
    pub open: OpenFn<T>,
}

/// Everything one kind of block holds: its name in PowerMTA's list (`global` for the top
/// level), its directives and its nested blocks.
pub(crate) struct Scope<T: 'static> {
    pub name: &'static str,
    pub directives: &'static [Directive<T>],
    pub blocks: &'static [Block<T>],
}

/// Names real configurations still carry from older PowerMTA versions, and today's name for
/// the same thing: (old, today's, whether it is a block).
const OLD_NAMES: &[(&str, &str, bool)] = &[
    ("421-means-mx-unavailable", "smtp-421-means-mx-unavailable", false),
    ("virtual-mta-group", "virtual-mta-pool", true),
];

pub(crate) struct Builder {
    pub config: Config,
    pub errors: Vec<ConfigError>,
    /// `smtp-pattern-list` names used in `<domain>` blocks, checked once all is read.
    pub pattern_refs: Vec<(String, Span)>,
    /// VMTA names used (`default-virtual-mta`, pool members), checked once all is read.
    pub vmta_refs: Vec<(String, Span)>,
    /// Names that must be VMTAs, not pools: pool members, `cold-virtual-mta`, reroutes.
    pub member_refs: Vec<(String, Span)>,
    /// Named sources used by `<smtp-user>` and listeners, checked once all is read.
    pub source_refs: Vec<(String, Span)>,
    /// `smtp-port N`: the port of the listener made when no `smtp-listener` is given.
    pub smtp_port: Option<u16>,
    /// `arc-sign yes` lines: they need an `arc-key`.
    pub arc_sign_refs: Vec<Span>,
    /// `suppression-lists` names, checked once all is read.
    pub list_refs: Vec<(String, Span)>,
    /// `http-access` and `http-api-key`, applied once `http-mgmt-port` is known.
    pub mgmt_access: Vec<(Cidr, Access)>,
    pub mgmt_key: Option<String>,
    /// `<source CIDR>` and `<source NAME>` blocks, merged once all is read.
    pub sources: Vec<(Cidr, SourceOverrides)>,
    pub named_sources: crate::names::Names<SourceOverrides>,
    /// `<spool DIR>` blocks in order, with `deliver-only`.
    pub spools: Vec<(std::path::PathBuf, bool)>,
    /// `pattern-list` and `call-to:` names (VMTA selection), checked once all is read.
    pub vmta_pattern_refs: Vec<(String, Span)>,
    /// `rewrite-list` names, checked once all is read.
    pub rewrite_refs: Vec<(String, Span)>,
    /// Where `spool-takeover` was given (its check waits for `spool`, which may come later).
    pub takeover_span: Option<Span>,
    /// `traffic-class NAME` uses, checked once every `<traffic-class>` is read.
    pub class_refs: Vec<(String, Span)>,
    /// `<proxy NAME>` blocks, for `use-proxy`.
    pub proxies: crate::names::Names<Proxy>,
    /// Global `smtp-proxy-source-host` and `use-proxy`, inherited by VMTAs once all is read.
    pub global_vmta: VirtualMta,
    /// `pickup-remove-dot` written before `pickup`.
    pub pending_remove_dot: Option<bool>,
}

impl Builder {
    pub fn new(config: Config) -> Builder {
        Builder {
            config,
            errors: Vec::new(),
            pattern_refs: Vec::new(),
            vmta_refs: Vec::new(),
            member_refs: Vec::new(),
            source_refs: Vec::new(),
            smtp_port: None,
            arc_sign_refs: Vec::new(),
            list_refs: Vec::new(),
            mgmt_access: Vec::new(),
            mgmt_key: None,
            sources: Vec::new(),
            named_sources: crate::names::Names::new(),
            spools: Vec::new(),
            vmta_pattern_refs: Vec::new(),
            rewrite_refs: Vec::new(),
            takeover_span: None,
            class_refs: Vec::new(),
            proxies: crate::names::Names::new(),
            global_vmta: VirtualMta::default(),
            pending_remove_dot: None,
        }
    }

    /// `spool-takeover DIR`: peers look for this host's spool at `DIR/<node-name>`.
    fn check_takeover(&mut self) {
        let Some(span) = self.takeover_span.clone() else { return };
        let Some(c) = &self.config.cluster else { return };
        let Some(root) = &c.spool_takeover else { return };
        let mine = root.join(&c.node_name);
        if self.config.spool_dir != mine {
            let message = format!(
                "spool-takeover: peers adopt this host's spool from {} but its `spool` is {}: \
                 set `spool {}` so that a peer finds the mail",
                mine.display(),
                self.config.spool_dir.display(),
                mine.display()
            );
            self.warn(&span, message);
        }
    }

    pub fn warn(&mut self, span: &Span, message: impl Into<String>) {
        self.config.warnings.push(Warning { span: span.clone(), message: message.into() });
    }

    /// Runs a block's children through its scope's tables into `target`.
    pub fn run<T>(&mut self, scope: &Scope<T>, target: &mut T, children: &[Node]) {
        for child in children {
            let result = match child {
                Node::Directive { name, args, span } => {
                    let (name, old) = self.today(name, span, false);
                    match scope.directives.iter().find(|d| d.name == name) {
                        Some(d) => (d.set)(self, target, &Line { name, args, span }),
                        None => self.unknown(scope.name, old, span, false),
                    }
                }
                Node::Block { name, arg, children, span } => {
                    let (name, old) = self.today(name, span, true);
                    match scope.blocks.iter().find(|b| b.name == name) {
                        Some(b) => (b.open)(self, target, &BlockRef { name, arg: arg.as_deref(), children, span }),
                        None => self.unknown(scope.name, old, span, true),
                    }
                }
            };
            if let Err(e) = result {
                self.errors.push(e);
            }
        }
    }

    /// A name older PowerMTA versions used for what has another name today (`OLD_NAMES`): read
    /// as today's, with a warning that names it. Returns the name to read and the name written.
    fn today<'n>(&mut self, name: &'n str, span: &Span, block: bool) -> (&'n str, &'n str) {
        match OLD_NAMES.iter().find(|(old, _, b)| *old == name && *b == block) {
            Some((old, new, _)) => {
                let (o, n) =
                    if block { (format!("<{old}>"), format!("<{new}>")) } else { (old.to_string(), new.to_string()) };
                self.warn(span, format!("`{o}` is what older PowerMTA versions called `{n}`; read as `{n}`"));
                (new, name)
            }
            None => (name, name),
        }
    }

    /// A name no table of `scope` reads: a warning when PowerMTA knows it, else an error.
    fn unknown(&mut self, scope: &str, name: &str, span: &Span, block: bool) -> Result<(), ConfigError> {
        let k = known();
        let shown = if block { format!("<{name}>") } else { name.to_string() };
        let in_scope = if block { k.block(scope, name) } else { k.directive(scope, name) };
        if in_scope {
            let what = match block {
                true => format!("`{shown}` is a PowerMTA block sluice does not implement; ignored with all it holds"),
                false => format!("`{shown}` is a PowerMTA directive sluice does not implement; ignored"),
            };
            let message = match crate::known::why_ignored(scope, name, block) {
                Some(i) if i.differs => format!("{what}, and mail differs from PowerMTA's: {}", i.why),
                Some(i) => format!("{what} (changes nothing a receiver sees: {})", i.why),
                None => what,
            };
            self.warn(span, message);
            return Ok(());
        }
        let elsewhere = crate::directives::scopes_reading(name, block);
        let mut scopes: Vec<&str> = k.scopes_of(name, block);
        scopes.extend(elsewhere.iter().copied());
        scopes.sort_unstable();
        scopes.dedup();
        if !scopes.is_empty() {
            let places: Vec<String> = scopes.iter().map(|s| place(s)).collect();
            self.warn(
                span,
                format!("`{shown}` does not belong in {}: it goes in {}; ignored", place(scope), places.join(", ")),
            );
            return Ok(());
        }
        Err(ConfigError::at(
            span,
            format!("unknown {} `{name}` in {}", if block { "block" } else { "directive" }, place(scope)),
            nearest_hint(scope, name),
        ))
    }
}

/// How a scope is named in messages.
pub(crate) fn place(scope: &str) -> String {
    match scope {
        "global" => "the global section".to_string(),
        s => format!("<{s}>"),
    }
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + usize::from(ca != *cb));
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The nearest name this scope takes (sluice's and PowerMTA's), when near enough; else the
/// nearest name of any scope, with where it goes.
fn nearest_hint(scope: &str, name: &str) -> String {
    let near_enough =
        |d: usize, k: &str| d <= 3 || (name.len() > 5 && (k.contains(name) || name.contains(k) && k.len() > 5));
    let ours = crate::directives::names_in(scope);
    let candidates = ours.into_iter().chain(known().names_in(scope));
    if let Some((d, k)) = candidates.map(|k| (distance(name, k), k)).min() {
        if near_enough(d, k) {
            return format!("did you mean `{k}`?");
        }
    }
    let everywhere = crate::directives::tables()
        .into_iter()
        .flat_map(|(s, d, b)| d.into_iter().chain(b).map(move |n| (s, n)))
        .chain(known().entries().iter().map(|e| (e.scope.as_str(), e.name.as_str())));
    match everywhere.map(|(s, k)| (distance(name, k), k, s)).filter(|(d, k, _)| near_enough(*d, k)).min() {
        Some((_, k, s)) => format!("did you mean `{k}` (it goes in {})?", place(s)),
        None => "see the README's PowerMTA section for the directives sluice reads".into(),
    }
}

/// The nearest of `known` to `name`, as a hint, when near enough.
pub(crate) fn near(name: &str, known: &[&str], otherwise: &str) -> String {
    match known.iter().map(|k| (distance(name, k), *k)).min() {
        Some((d, k)) if d <= 3 => format!("did you mean `{k}`?"),
        _ => otherwise.to_string(),
    }
}

impl Builder {
    /// Once every block is read: names used before their definitions are checked, source
    /// rules merged, the management API's access rules applied.
    pub fn finish(&mut self, file: &str) {
        self.merge_sources();
        let headers: Vec<String> = self.config.acct_files.iter().flat_map(|a| a.headers()).collect();
        for name in headers {
            if !self.config.acct_headers.iter().any(|h| h.eq_ignore_ascii_case(&name)) {
                self.config.acct_headers.push(name);
            }
        }
        if let Some(m) = &mut self.config.mgmt {
            m.access = std::mem::take(&mut self.mgmt_access);
            m.api_key = self.mgmt_key.take();
        }
        self.check_refs();
        self.settle_proxies();
        if let (Some(l), true) =
            (self.config.transmissions_api.listeners.first(), self.config.transmissions_api.keys.is_empty())
        {
            let e = ConfigError::at(
                &l.certificate.span,
                "a <transmissions-api-listener> needs an `api-key` in <transmissions-api>",
                "add `<transmissions-api> api-key KEY </transmissions-api>` (32 to 128 letters, digits or `_`)",
            );
            self.errors.push(e);
        }
        if let (Some(p), Some(on)) = (self.config.pickup.as_mut(), self.pending_remove_dot) {
            p.remove_dot = on;
        }
        if let (Some(span), None) = (self.arc_sign_refs.first(), &self.config.arc_key) {
            let e = ConfigError::at(
                span,
                "`arc-sign yes` needs an `arc-key`",
                "add `arc-key SELECTOR,DOMAIN,KEYFILE` (an RSA key)",
            );
            self.errors.push(e);
        }
        if self.config.listeners.is_empty() && self.errors.is_empty() {
            // PowerMTA's rule: no `smtp-listener` → one on 0.0.0.0, port `smtp-port` (25).
            let span = Span { file: file.into(), line: 0 };
            let port = self.smtp_port.unwrap_or(25);
            let why = if self.smtp_port.is_some() { "smtp-port" } else { "PowerMTA's default" };
            self.warn(&span, format!("no `smtp-listener`: listening on 0.0.0.0:{port} ({why})"));
            let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
            self.config.listeners.push(Listener { addr, source: None, immediate_tls: false });
        }
    }

    /// Each `<source CIDR>` rule becomes the defaults, then every rule whose range holds it
    /// from the widest to itself (the rules matching one address are nested).
    fn merge_sources(&mut self) {
        let mut rules = std::mem::take(&mut self.sources);
        rules.sort_by_key(|(c, _)| c.prefix);
        let merged: Vec<SourceRule> = rules
            .iter()
            .map(|(cidr, _)| {
                let mut policy = SourcePolicy::default();
                for (wider, o) in rules.iter().filter(|(w, _)| w.prefix <= cidr.prefix && w.contains(cidr.addr)) {
                    let _ = wider;
                    o.apply(&mut policy);
                }
                SourceRule { cidr: *cidr, policy }
            })
            .collect();
        self.config.set_sources(merged, std::mem::take(&mut self.named_sources));
    }

    /// `use-proxy` names become their `<proxy>` blocks (connected to from the VMTA's
    /// `smtp-source-host`, as PowerMTA 5.0r2 configurations have it), `proxy-protocol`
    /// applies to the VMTA's `smtp-proxy-source-host` lines, and a VMTA with no proxy of its
    /// own inherits the global `use-proxy`, or the global `smtp-proxy-source-host` lines when
    /// it has no `smtp-source-host` either.
    fn settle_proxies(&mut self) {
        let mut global = std::mem::take(&mut self.global_vmta);
        let mut errors = Vec::new();
        let proxies = &self.proxies;
        let mut named = |names: &[String], local: Option<std::net::IpAddr>, span: &Span| -> Vec<Proxy> {
            let mut list = Vec::new();
            for name in names {
                match proxies.get(name) {
                    Some(p) => list.push(Proxy { local, ..p.clone() }),
                    None => errors.push(ConfigError::at(
                        span,
                        format!("proxy `{name}` is not defined"),
                        format!("define it with `<proxy {name}>` holding `server` and `client`"),
                    )),
                }
            }
            list
        };
        let global_use = global.use_proxy.take();
        let global_local = self.config.global_source.as_ref().map(|g| g.0);
        for p in &mut global.proxies {
            p.version = global.proxy_version.unwrap_or(p.version);
        }
        if let Some((names, span)) = &global_use {
            global.proxies.extend(named(names, global_local, span));
        }
        for v in self.config.vmtas.values_mut() {
            for p in &mut v.proxies {
                p.version = v.proxy_version.unwrap_or(p.version);
            }
            let own_use = v.use_proxy.take();
            if let Some((names, span)) = own_use.as_ref().or(global_use.as_ref().filter(|_| v.proxies.is_empty())) {
                let list = named(names, v.source_ip, span);
                v.proxies.extend(list);
            } else if v.proxies.is_empty() && v.source_ip.is_none() {
                v.proxies.clone_from(&global.proxies);
            }
        }
        self.config.global_proxies = global.proxies;
        self.errors.extend(errors);
    }

    fn check_refs(&mut self) {
        self.check_takeover();
        // Pool members as their VMTAs were defined (a pool may name them in another case).
        let defined: Vec<Vec<String>> = self
            .config
            .pools
            .values()
            .map(|members| members.iter().map(|m| self.config.defined_vmta(m)).collect())
            .collect();
        for (members, defined) in self.config.pools.values_mut().zip(defined) {
            *members = defined;
        }
        let c = &self.config;
        let mut errors = Vec::new();
        for (name, span) in &self.vmta_pattern_refs {
            if !c.vmta_pattern_lists.contains_key(name) {
                errors.push(ConfigError::at(
                    span,
                    format!("pattern-list `{name}` is not defined"),
                    format!("define it with `<pattern-list {name}>`"),
                ));
            }
        }
        for (name, span) in &self.class_refs {
            if !c.traffic_classes.iter().any(|t| t.name == *name) {
                errors.push(ConfigError::at(
                    span,
                    format!("traffic-class `{name}` is not defined"),
                    format!("define it with `<traffic-class {name}> shards 1 </traffic-class>`"),
                ));
            }
        }
        for (name, span) in &self.rewrite_refs {
            if !c.rewrite_lists.contains_key(name) {
                errors.push(ConfigError::at(
                    span,
                    format!("rewrite-list `{name}` is not defined"),
                    format!("define it with `<rewrite-list {name}>`"),
                ));
            }
        }
        if c.cluster.is_none() {
            for list in c.address_lists.values() {
                if let Some((_, span)) = list.entries.iter().find(|(e, _)| matches!(e, ListEntry::RedisSet(_))) {
                    errors.push(ConfigError::at(
                        span,
                        format!("address-list `{}` has a `redis-set` but there is no <cluster>", list.name),
                        "add `<cluster> redis-server HOST:PORT </cluster>`",
                    ));
                }
            }
        }
        for (name, span) in &self.list_refs {
            if !c.address_lists.contains_key(name) {
                errors.push(ConfigError::at(
                    span,
                    format!("address-list `{name}` is not defined"),
                    format!("define it with `<address-list {name}>`"),
                ));
            }
        }
        for (name, span) in &self.source_refs {
            if name != "{auth}" && !c.has_named_source(name) {
                errors.push(ConfigError::at(
                    span,
                    format!("source `{name}` is not defined"),
                    format!("define it with `<source {name}>`"),
                ));
            }
        }
        for (name, span) in &self.pattern_refs {
            if !c.pattern_lists.contains_key(name) {
                errors.push(ConfigError::at(
                    span,
                    format!("smtp-pattern-list `{name}` is not defined"),
                    "define it with `<smtp-pattern-list NAME>`",
                ));
            }
        }
        let vmtas: Vec<&str> = c.vmtas.keys().map(String::as_str).collect();
        let targets: Vec<&str> = vmtas.iter().copied().chain(c.pools.keys().map(String::as_str)).collect();
        for (name, span) in &self.vmta_refs {
            if !c.vmtas.contains_key(name) && !c.pools.contains_key(name) {
                let hint = near(name, &targets, "define it with `<virtual-mta NAME>` or `<virtual-mta-pool NAME>`");
                errors.push(ConfigError::at(span, format!("virtual MTA or pool `{name}` is not defined"), hint));
            }
        }
        for (name, span) in &self.member_refs {
            if !c.vmtas.contains_key(name) {
                let hint = near(name, &vmtas, "define it with `<virtual-mta NAME>`");
                errors.push(ConfigError::at(span, format!("virtual MTA `{name}` is not defined"), hint));
            }
        }
        self.errors.extend(errors);
    }
}
