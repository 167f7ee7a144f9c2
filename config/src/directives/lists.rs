//! Lists: `<address-list>`, the report processors that hold one, `<bounce-category-patterns>`
//! and `<smtp-pattern-list>`.

use crate::build::{near, Block, BlockRef, Builder, Directive, Line, Scope};
use crate::model::*;
use crate::units;
use crate::ConfigError;
use std::sync::Arc;

pub(crate) const ADDRESS_LIST: Scope<Vec<(ListEntry, crate::ast::Span)>> = Scope {
    name: "address-list",
    directives: &[
        Directive { name: "address", set: address },
        Directive {
            name: "address-file",
            set: |_, e, l| {
                e.push((ListEntry::File(l.path(l.one()?)), l.span.clone()));
                Ok(())
            },
        },
        Directive {
            name: "domain",
            set: |_, e, l| {
                let d = l.one()?.trim_end_matches('.').to_ascii_lowercase();
                e.push((ListEntry::Domain(d), l.span.clone()));
                Ok(())
            },
        },
        Directive {
            name: "redis-set",
            set: |_, e, l| {
                e.push((ListEntry::RedisSet(l.one()?.to_string()), l.span.clone()));
                Ok(())
            },
        },
        Directive {
            name: "address-hash-file",
            set: |_, e, l| {
                e.push((ListEntry::HashFile(l.path(l.one()?)), l.span.clone()));
                Ok(())
            },
        },
        Directive {
            name: "address-hmac-file",
            set: |_, e, l| {
                let [file, key] = l.args else {
                    return Err(l.err(
                        "`address-hmac-file` takes a file and a key",
                        "write `address-hmac-file /etc/sluice/hmac.txt SECRETKEY`",
                    ));
                };
                e.push((ListEntry::HmacFile(l.path(file), key.clone()), l.span.clone()));
                Ok(())
            },
        },
    ],
    blocks: &[],
};

/// `address a@b.com`, `address abuse` (a local part, any domain) or `address /regex/`.
fn address(_: &mut Builder, e: &mut Vec<(ListEntry, crate::ast::Span)>, l: &Line) -> Result<(), ConfigError> {
    let a = l.one()?;
    let entry = match a.strip_prefix('/').and_then(|r| r.strip_suffix('/')) {
        Some(re) => {
            regex::Regex::new(re)
                .map_err(|err| l.err(format!("bad regex `{a}`: {err}"), "write `address /^bounce-.*@/`"))?;
            ListEntry::Regex(re.to_string())
        }
        None => ListEntry::Address(a.to_ascii_lowercase()),
    };
    e.push((entry, l.span.clone()));
    Ok(())
}

/// `<address-list NAME>`; returns the name.
pub(crate) fn address_list(b: &mut Builder, r: &BlockRef) -> Result<String, ConfigError> {
    let name = r.arg("suppress1")?.to_string();
    let mut entries = Vec::new();
    b.run(&ADDRESS_LIST, &mut entries, r.children);
    b.config.address_lists.insert(name.clone(), AddressListConfig { name: name.clone(), entries });
    Ok(name)
}

/// A report processor while it is read.
#[derive(Default)]
pub(crate) struct Processor {
    deliver_unmatched: bool,
    auto_suppress: Option<String>,
    list: Option<AddressListConfig>,
}

const PROCESSOR_DIRECTIVES: &[Directive<Processor>] = &[
    Directive {
        name: "deliver-unmatched-email",
        set: |_, p, l| {
            p.deliver_unmatched = l.bool()?;
            Ok(())
        },
    },
    Directive {
        name: "auto-suppress-list",
        set: |b, p, l| {
            let list = l.one()?.to_string();
            b.list_refs.push((list.clone(), l.span.clone()));
            p.auto_suppress = Some(list);
            Ok(())
        },
    },
];

const PROCESSOR_BLOCKS: &[Block<Processor>] = &[Block {
    name: "address-list",
    open: |b, p, r| {
        const ANON: &str = "{report-processor}";
        let r = BlockRef { arg: Some(r.arg.unwrap_or(ANON)), ..*r };
        let name = address_list(b, &r)?;
        p.list = b.config.address_lists.remove(&name).map(|l| AddressListConfig { name: ANON.into(), ..l });
        Ok(())
    },
}];

pub(crate) const FEEDBACK_PROCESSOR: Scope<Processor> =
    Scope { name: "feedback-loop-processor", directives: PROCESSOR_DIRECTIVES, blocks: PROCESSOR_BLOCKS };
pub(crate) const BOUNCE_PROCESSOR: Scope<Processor> =
    Scope { name: "bounce-processor", directives: PROCESSOR_DIRECTIVES, blocks: PROCESSOR_BLOCKS };

/// `<feedback-loop-processor>` / `<bounce-processor>`: reports sent to the addresses of its
/// `<address-list>` become `f` / `rb` records.
pub(crate) fn report_processor(b: &mut Builder, r: &BlockRef) -> Result<FeedbackProcessor, ConfigError> {
    let mut p = Processor::default();
    let scope = if r.name == "bounce-processor" { &BOUNCE_PROCESSOR } else { &FEEDBACK_PROCESSOR };
    b.run(scope, &mut p, r.children);
    let Some(addresses) = p.list else {
        return Err(ConfigError::at(
            r.span,
            format!("`<{}>` needs an `<address-list>` of the addresses reports come to", r.name),
            "add `<address-list> address fbl@example.com </address-list>` inside it",
        ));
    };
    Ok(FeedbackProcessor { addresses, deliver_unmatched: p.deliver_unmatched, auto_suppress: p.auto_suppress })
}

/// `<bounce-category-patterns>`: `/regex/ category` lines (`/regex/i` for any case), tried in
/// order before the built-in rules. Category names are free, as in PowerMTA; one close to a
/// built-in name gets a warning in case it is a typo.
pub(crate) fn bounce_patterns(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let mut patterns = (*b.config.bounce_patterns).clone();
    for child in r.children {
        let crate::ast::Node::Directive { name: pattern, args, span } = child else {
            b.errors.push(ConfigError::at(child.span(), "a block cannot go in `<bounce-category-patterns>`", ""));
            continue;
        };
        match bounce_pattern(b, pattern, args, span) {
            Ok(p) => patterns.push(p),
            Err(e) => b.errors.push(e),
        }
    }
    b.config.bounce_patterns = Arc::new(patterns);
    Ok(())
}

fn bounce_pattern(
    b: &mut Builder,
    pattern: &str,
    args: &[String],
    span: &crate::ast::Span,
) -> Result<BouncePattern, ConfigError> {
    let syntax = "write `/regex/ category`, e.g. `/mailbox.*full/ quota-issues`";
    // `/regex/ category`, `/regex/i category`, and as real files also write it, the category
    // right after the closing slash (`/spam/spam-related`); blanks inside the regex split it
    // into several arguments.
    let whole = std::iter::once(pattern).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
    let close = whole.rfind('/').filter(|&i| i > 0 && whole.starts_with('/'));
    let Some(close) = close else {
        return Err(ConfigError::at(span, format!("`{pattern}` is not a /regex/"), syntax));
    };
    let body = &whole[1..close];
    let rest = &whole[close + 1..];
    let (insensitive, category) = match rest.strip_prefix('i') {
        Some(r) if r.starts_with(char::is_whitespace) => (true, r.trim()),
        _ => (false, rest.trim()),
    };
    if category.is_empty() || category.contains(char::is_whitespace) {
        return Err(ConfigError::at(span, "a pattern takes one category", syntax));
    }
    let category = category.to_ascii_lowercase();
    if !BOUNCE_CATEGORIES.contains(&category.as_str()) && category != "success" {
        let hint = near(&category, BOUNCE_CATEGORIES, "");
        if hint.starts_with("did you mean") {
            b.warn(span, format!("`{category}` is a category of your own, not one of PowerMTA's ({hint})"));
        }
    }
    let regex = regex::RegexBuilder::new(body)
        .case_insensitive(insensitive)
        .build()
        .map_err(|e| ConfigError::at(span, format!("bad regex `{pattern}`: {e}"), syntax))?;
    Ok(BouncePattern { regex, category: Arc::from(category) })
}

/// `<smtp-pattern-list NAME>`: `reply /regex/ action[,action...]` lines.
pub(crate) fn smtp_pattern_list(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let name = r.arg("errors")?;
    let mut rules = Vec::new();
    b.run(&PATTERN_LIST, &mut rules, r.children);
    b.config.pattern_lists.insert(name.to_string(), Arc::new(rules));
    Ok(())
}

pub(crate) const PATTERN_LIST: Scope<Vec<PatternRule>> =
    Scope { name: "smtp-pattern-list", directives: &[Directive { name: "reply", set: reply }], blocks: &[] };

fn reply(_: &mut Builder, rules: &mut Vec<PatternRule>, l: &Line) -> Result<(), ConfigError> {
    let syntax = "write `reply /regex/ mode=backoff,backoff-to-normal-after=30m`";
    let [pattern, actions @ ..] = l.args else {
        return Err(l.err("`reply` needs a /regex/ and actions", syntax));
    };
    let body = pattern
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix('/'))
        .ok_or_else(|| l.err(format!("`{pattern}` is not a /regex/"), syntax))?;
    let regex = regex::Regex::new(body).map_err(|e| l.err(format!("bad regex `{pattern}`: {e}"), syntax))?;
    let mut parsed = Vec::new();
    let (mut to_normal, mut backoff, mut disable, mut reenable) = (None, false, false, None);
    for action in actions.join(",").split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match action.split_once('=') {
            Some(("mode", "backoff")) => backoff = true,
            Some(("mode", "normal")) => parsed.push(PatternAction::Normal),
            Some(("backoff-to-normal-after", d)) => to_normal = Some(l.value(units::parse_duration(d))?),
            None if action == "bounce-rcpt" => parsed.push(PatternAction::BounceRcpt),
            None if action == "defer-queue" => parsed.push(PatternAction::DeferQueue),
            None if action == "bounce-queue" => parsed.push(PatternAction::BounceQueue),
            None if action == "skip-mx" => parsed.push(PatternAction::SkipMx),
            None if action == "disable-source-ip" => disable = true,
            Some(("reenable-after", d)) => reenable = Some(l.value(units::parse_duration(d))?),
            _ => {
                return Err(l.err(
                    format!("unknown pattern action `{action}`"),
                    "use mode=backoff, mode=normal, backoff-to-normal-after=D, bounce-rcpt, defer-queue, bounce-queue, skip-mx, disable-source-ip or reenable-after=D",
                ))
            }
        }
    }
    if backoff {
        parsed.insert(0, PatternAction::Backoff(to_normal));
    }
    if disable {
        parsed.push(PatternAction::DisableSourceIp(reenable.unwrap_or(REENABLE_AFTER_DEFAULT)));
    } else if reenable.is_some() {
        return Err(
            l.err("`reenable-after` without `disable-source-ip`", "write `disable-source-ip,reenable-after=30m`")
        );
    }
    rules.push(PatternRule { regex, actions: parsed });
    Ok(())
}

/// A `/regex/` (or `/regex/i`) at the front of `args`, which may span several arguments
/// when it holds blanks; returns it built and the arguments after it.
fn slash_regex<'a>(l: &Line, args: &'a [String], syntax: &str) -> Result<(regex::Regex, &'a [String]), ConfigError> {
    let first = args.first().ok_or_else(|| l.err(format!("`{}` needs a /regex/", l.name), syntax))?;
    if !first.starts_with('/') {
        return Err(l.err(format!("`{first}` is not a /regex/"), syntax));
    }
    let closes = |a: &str, i: usize| (i > 0 || a.len() > 1) && (a.ends_with('/') || a.ends_with("/i"));
    let end = args
        .iter()
        .enumerate()
        .position(|(i, a)| closes(a, i))
        .ok_or_else(|| l.err(format!("`{first}` is not closed with /"), syntax))?;
    let text = args[..=end].join(" ");
    let (body, insensitive) = match text.strip_suffix("/i") {
        Some(b) => (&b[1..], true),
        None => (&text[1..text.len() - 1], false),
    };
    let regex = regex::RegexBuilder::new(body)
        .case_insensitive(insensitive)
        .build()
        .map_err(|e| l.err(format!("bad regex `{text}`: {e}"), syntax))?;
    Ok((regex, &args[end + 1..]))
}

/// `<pattern-list NAME>`: `mail-from /re/ RESULT`, `rcpt-to /re/ RESULT`,
/// `header NAME /re/ RESULT`, `* RESULT`.
pub(crate) fn vmta_pattern_list(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let name = r.arg("by-sender")?;
    let mut rules = Vec::new();
    b.run(&VMTA_PATTERN_LIST, &mut rules, r.children);
    b.config.vmta_pattern_lists.insert(name.to_string(), Arc::new(VmtaPatternList { rules }));
    Ok(())
}

pub(crate) const VMTA_PATTERN_LIST: Scope<Vec<VmtaPattern>> = Scope {
    name: "pattern-list",
    directives: &[
        Directive { name: "mail-from", set: |b, r, l| vmta_pattern(b, r, l, PatternOn::MailFrom, l.args) },
        Directive { name: "rcpt-to", set: |b, r, l| vmta_pattern(b, r, l, PatternOn::RcptTo, l.args) },
        Directive {
            name: "header",
            set: |b, r, l| {
                let [header, rest @ ..] = l.args else {
                    return Err(l.err("`header` needs a field name", "write `header from /@news\\./ virtual-mta=news`"));
                };
                vmta_pattern(b, r, l, PatternOn::Header(header.to_ascii_lowercase()), rest)
            },
        },
        Directive { name: "*", set: |b, r, l| vmta_pattern(b, r, l, PatternOn::Any, l.args) },
    ],
    blocks: &[],
};

fn vmta_pattern(
    b: &mut Builder,
    rules: &mut Vec<VmtaPattern>,
    l: &Line,
    on: PatternOn,
    args: &[String],
) -> Result<(), ConfigError> {
    let syntax = "write `mail-from /@news\\.example\\.com$/ virtual-mta=news`";
    let (regex, result) = match on {
        PatternOn::Any => (regex::Regex::new("").expect("empty regex"), args),
        _ => slash_regex(l, args, syntax)?,
    };
    if result.iter().any(|a| a.starts_with('<')) {
        return Err(l.err(
            "a nested <pattern-list> inside a rule is not supported",
            "give the inner list its own <pattern-list NAME> and write `call-to:NAME`",
        ));
    }
    let (mut vmta, mut call_to) = (None, None);
    for item in result.join(",").split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if let Some(v) = item.strip_prefix("virtual-mta=") {
            b.vmta_refs.push((v.to_string(), l.span.clone()));
            vmta = Some(v.to_string());
        } else if let Some(list) = item.strip_prefix("call-to:") {
            b.vmta_pattern_refs.push((list.to_string(), l.span.clone()));
            call_to = Some(list.to_string());
        } else if item.starts_with("recipient-priority=") {
            b.warn(l.span, format!("`{item}`: recipient priorities are not implemented yet; ignored"));
        } else {
            return Err(l.err(format!("unknown pattern result `{item}`"), "use virtual-mta=NAME or call-to:LIST"));
        }
    }
    rules.push(VmtaPattern { on, regex, vmta, call_to });
    Ok(())
}

/// `<rewrite-list NAME>`: `mail-from SOURCE TARGET`, `from-domain PATTERN DOMAIN`.
pub(crate) fn rewrite_list(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let name = r.arg("abc")?;
    let mut list = RewriteList::default();
    b.run(&REWRITE_LIST, &mut list, r.children);
    b.config.rewrite_lists.insert(name.to_string(), Arc::new(list));
    Ok(())
}

pub(crate) const REWRITE_LIST: Scope<RewriteList> = Scope {
    name: "rewrite-list",
    directives: &[
        Directive {
            name: "mail-from",
            set: |_, list, l| {
                let syntax = "write `mail-from *@old.example *@bounces.example`";
                let [from, to] = l.args else { return Err(l.err("`mail-from` takes a source and a target", syntax)) };
                let (from, to) = (address_pattern(l, from, syntax)?, address_pattern(l, to, syntax)?);
                if matches!(from, AddressPattern::Null)
                    && matches!(&to, AddressPattern::Address { local, domain } if local.is_none() || domain.is_none())
                {
                    return Err(l.err("`*` in the target needs a source address to copy from", syntax));
                }
                list.mail_from.push((from, to));
                Ok(())
            },
        },
        Directive {
            name: "from-domain",
            set: |_, list, l| {
                let syntax = "write `from-domain *.example.com bounces.example.com`";
                let [from, to] = l.args else {
                    return Err(l.err("`from-domain` takes a domain pattern and a domain", syntax));
                };
                let pattern = l.value(crate::overrides::DomainPattern::parse(from))?;
                list.from_domain.push((pattern, to.to_ascii_lowercase()));
                Ok(())
            },
        },
    ],
    blocks: &[],
};

/// `a@b`, `a@*`, `*@b`, `*@*` or `<>`.
fn address_pattern(l: &Line, v: &str, syntax: &str) -> Result<AddressPattern, ConfigError> {
    if v == "<>" {
        return Ok(AddressPattern::Null);
    }
    let Some((local, domain)) = v.rsplit_once('@') else {
        return Err(l.err(format!("`{v}` is not an address pattern"), syntax));
    };
    let part = |p: &str| (p != "*").then(|| p.to_string());
    Ok(AddressPattern::Address { local: part(local), domain: part(domain) })
}

/// `<mx-rollup-list>`: `mx HOST NAME.rollup [rollup-by-ip]`.
pub(crate) const MX_ROLLUP_LIST: Scope<MxRollupList> = Scope {
    name: "mx-rollup-list",
    directives: &[Directive {
        name: "mx",
        set: |_, list, l| {
            let syntax = "write `mx mx1.example.net example.rollup` or `mx *.example.net example.rollup rollup-by-ip`";
            let (host, rollup, by_ip) = match l.args {
                [h, r] => (h, r, false),
                [h, r, opt] if opt.eq_ignore_ascii_case("rollup-by-ip") => (h, r, true),
                _ => return Err(l.err("`mx` takes a host, a rollup name and optionally rollup-by-ip", syntax)),
            };
            let rollup = rollup.to_ascii_lowercase();
            if !rollup.ends_with(".rollup") {
                return Err(l.err(format!("`{rollup}`: a rollup queue's name ends in .rollup"), syntax));
            }
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            list.entries.push(MxRollupEntry { host, rollup, by_ip });
            Ok(())
        },
    }],
    blocks: &[],
};

/// `<traffic-class NAME>` while it is read: `shards N`.
pub(crate) const TRAFFIC_CLASS: Scope<Option<u32>> = Scope {
    name: "traffic-class",
    directives: &[Directive {
        name: "shards",
        set: |_, n, l| {
            let count = l.count()?;
            if count == 0 {
                return Err(l.err("a traffic class needs at least one shard", "`shards 1`"));
            }
            *n = Some(count);
            Ok(())
        },
    }],
    blocks: &[],
};

/// `<traffic-class NAME>`: shards reserved for one stream of mail.
pub(crate) fn traffic_class(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let name = r.arg.unwrap_or("").trim().to_string();
    if name.is_empty() {
        return Err(ConfigError::at(r.span, "<traffic-class> needs a name", "`<traffic-class transactional>`"));
    }
    if b.config.traffic_classes.iter().any(|c| c.name == name) {
        return Err(ConfigError::at(r.span, format!("traffic-class `{name}` is defined twice"), "keep one"));
    }
    let mut shards = None;
    b.run(&TRAFFIC_CLASS, &mut shards, r.children);
    let Some(shards) = shards else {
        return Err(ConfigError::at(r.span, format!("<traffic-class {name}> needs `shards N`"), "add `shards 1`"));
    };
    b.config.traffic_classes.push(crate::model::TrafficClass { name, shards });
    Ok(())
}

/// `<cluster>` while it is read.
#[derive(Default)]
pub(crate) struct ClusterBlock {
    redis: Option<String>,
    node: Option<String>,
    expected: Option<u32>,
    takeover: Option<(std::path::PathBuf, crate::ast::Span)>,
    takeover_after: Option<std::time::Duration>,
}

pub(crate) const CLUSTER: Scope<ClusterBlock> = Scope {
    name: "cluster",
    directives: &[
        Directive {
            name: "redis-server",
            set: |_, c, l| {
                let v = l.one()?;
                c.redis = Some(match v.contains("://") {
                    true => v.to_string(),
                    false => format!("redis://{v}/"),
                });
                Ok(())
            },
        },
        Directive {
            name: "node-name",
            set: |_, c, l| {
                c.node = Some(l.one()?.to_string());
                Ok(())
            },
        },
        Directive {
            name: "expected-nodes",
            set: |_, c, l| {
                let n = l.count()?;
                if n == 0 {
                    return Err(l.err("expected-nodes 0", "the number of hosts in the fleet, at least 1"));
                }
                c.expected = Some(n);
                Ok(())
            },
        },
        Directive {
            name: "spool-takeover",
            set: |_, c, l| {
                c.takeover = Some((l.path(l.one()?), l.span.clone()));
                Ok(())
            },
        },
        Directive {
            name: "takeover-after",
            set: |_, c, l| {
                let d = l.duration()?;
                if d < std::time::Duration::from_secs(1) {
                    return Err(l.err(
                        format!("takeover-after {d:?} is shorter than a host's pause for a slow disk"),
                        "use at least 1s (10s is the usual)",
                    ));
                }
                c.takeover_after = Some(d);
                Ok(())
            },
        },
    ],
    blocks: &[],
};

/// `<cluster>`: Redis, this node's name, the fleet's expected size.
pub(crate) fn cluster(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let mut c = ClusterBlock::default();
    b.run(&CLUSTER, &mut c, r.children);
    let Some(redis_url) = c.redis else {
        return Err(ConfigError::at(r.span, "<cluster> needs `redis-server`", "add `redis-server 127.0.0.1:6379`"));
    };
    let node_name = c.node.unwrap_or_else(|| b.config.host_name.clone());
    b.takeover_span = c.takeover.as_ref().map(|(_, span)| span.clone());
    b.config.cluster = Some(Cluster {
        redis_url,
        node_name,
        expected_nodes: c.expected.unwrap_or(1),
        spool_takeover: c.takeover.map(|(root, _)| root),
        takeover_after: c.takeover_after.unwrap_or(std::time::Duration::from_secs(10)),
    });
    Ok(())
}
