//! `<domain PATTERN>`: how mail to a destination is delivered.

use crate::build::{Directive, Line, Scope};
use crate::model::*;
use crate::overrides::DomainOverrides;
use crate::units;
use crate::ConfigError;

pub(crate) const SCOPE: Scope<DomainOverrides> = Scope { name: "domain", directives: DIRECTIVES, blocks: &[] };

const DIRECTIVES: &[Directive<DomainOverrides>] = &[
    Directive { name: "max-smtp-out", set: max_smtp_out },
    value!("max-msg-per-connection", count, max_msg_per_connection),
    value!("max-rcpt-per-message", count, max_rcpt_per_message),
    value!("max-rcpt-per-transaction", count, max_rcpt_per_message),
    value!("retry-after", durations, retry_after),
    value!("bounce-after", duration, bounce_after),
    flag!("backoff-to-normal-after-delivery", backoff_to_normal_after_delivery),
    Directive {
        name: "queue-to",
        set: |_, o, l| {
            let target = l.one()?.to_ascii_lowercase();
            o.queue_to = Some(target.clone());
            o.set(move |s| s.queue_to = Some(target.clone()));
            Ok(())
        },
    },
    flag!("adaptive-rate", adaptive_rate),
    Directive {
        name: "queue-priority",
        set: |_, o, l| {
            let n = l.count()?;
            if n > 100 {
                return Err(l.err(format!("queue-priority {n} is out of range"), "use 0 to 100"));
            }
            o.set(move |s| s.queue_priority = n as u8);
            Ok(())
        },
    },
    Directive {
        name: "disable-mx-rollup",
        set: |_, o, l| {
            let v = !l.bool()?;
            o.set(move |s| s.mx_rollup = v);
            Ok(())
        },
    },
    flag!("dkim-sign", dkim_sign),
    flag!("use-starttls", use_starttls),
    flag!("require-starttls", require_starttls),
    Directive {
        name: "downgrade-8bit",
        set: |_, o, l| {
            let v =
                l.choice(&[("quoted-printable", Downgrade8bit::QuotedPrintable), ("bounce", Downgrade8bit::Bounce)])?;
            o.set(move |s| s.downgrade_8bit = v);
            Ok(())
        },
    },
    Directive { name: "dkim-headers", set: |_, o, l| dkim_headers(o, l, first) },
    Directive { name: "dkim-headers-canon", set: |_, o, l| canon(o, l, true, first) },
    Directive { name: "dkim-header-canon", set: |_, o, l| canon(o, l, true, first) },
    Directive { name: "dkim-body-canon", set: |_, o, l| canon(o, l, false, first) },
    Directive { name: "dkim-identity", set: |_, o, l| dkim_identity(o, l, first) },
    Directive { name: "dkim-expire-after", set: |_, o, l| dkim_expire_after(o, l, first) },
    // A second DKIM-Signature with options of its own (User's Guide 10.3.4: an ESP's beside
    // the customer's): every `dkim-*` directive with `second-` before it.
    flag!("second-dkim-sign", second_dkim_sign),
    Directive { name: "second-dkim-headers", set: |_, o, l| dkim_headers(o, l, second) },
    Directive { name: "second-dkim-headers-canon", set: |_, o, l| canon(o, l, true, second) },
    Directive { name: "second-dkim-header-canon", set: |_, o, l| canon(o, l, true, second) },
    Directive { name: "second-dkim-body-canon", set: |_, o, l| canon(o, l, false, second) },
    Directive { name: "second-dkim-identity", set: |_, o, l| dkim_identity(o, l, second) },
    Directive { name: "second-dkim-expire-after", set: |_, o, l| dkim_expire_after(o, l, second) },
    Directive {
        name: "smtp-pattern-list",
        set: |b, o, l| {
            let list = l.one()?.to_string();
            b.pattern_refs.push((list.clone(), l.span.clone()));
            o.set(move |s| s.pattern_list = Some(list.clone()));
            Ok(())
        },
    },
    value!("backoff-max-msg-rate", rate_limit, backoff_max_msg_rate),
    value!("backoff-max-connect-rate", rate_limit, backoff_max_connect_rate),
    Directive {
        name: "backoff-max-smtp-out",
        set: |_, o, l| {
            let n = l.count()?;
            o.set(move |s| s.backoff_max_smtp_out = Some(n));
            Ok(())
        },
    },
    value!("backoff-retry-after", durations, backoff_retry_after),
    value!("backoff-to-normal-after", duration, backoff_to_normal_after),
    value!("max-msg-rate", rate_limit, max_msg_rate),
    value!("retry-after-dns-error", duration, retry_after_dns_error),
    flag!("deliver-local-dsn", deliver_local_dsn),
    // The Guide's deprecated names for `max-msg-rate N/h` and `backoff-max-msg-rate N/h`.
    value!("max-msg-per-hour", per_hour, max_msg_rate),
    value!("backoff-max-msg-per-hour", per_hour, backoff_max_msg_rate),
    value!("max-connect-rate", rate_limit, max_connect_rate),
    Directive { name: "smtp-hosts", set: smtp_hosts },
    value!("connect-timeout", duration, smtp.connect_timeout),
    value!("smtp-greeting-timeout", duration, smtp.greeting_timeout),
    value!("data-send-timeout", duration, smtp.data_send_timeout),
    value!("smtp-data-termination-timeout", duration, smtp.data_termination_timeout),
    Directive {
        name: "max-errors-per-connection",
        set: |_, o, l| {
            let n = l.value(units::parse_count_or_unlimited(l.one()?))?.unwrap_or(0);
            o.set(move |s| s.smtp.max_errors_per_connection = n);
            Ok(())
        },
    },
    Directive {
        name: "mx-connection-attempts",
        set: |_, o, l| {
            let n = l.count_or_unlimited()?;
            if n == 0 {
                return Err(l.err("mx-connection-attempts 0 would never connect", "use at least 1"));
            }
            o.set(move |s| s.smtp.mx_connection_attempts = n);
            Ok(())
        },
    },
    flag!("smtp-421-means-mx-unavailable", smtp.smtp_421_means_mx_unavailable),
    flag!("smtp-553-means-invalid-mailbox", smtp.smtp_553_means_invalid_mailbox),
    flag!("bounce-upon-5xx-greeting", smtp.bounce_upon_5xx_greeting),
    flag!("assume-delivery-upon-data-termination-timeout", smtp.assume_delivery_upon_data_termination_timeout),
    flag!("ignore-8bitmime", smtp.ignore_8bitmime),
    flag!("ignore-pipelining", smtp.ignore_pipelining),
    flag!("ignore-dsn", smtp.ignore_dsn),
    flag!("ignore-chunking", smtp.ignore_chunking),
    Directive {
        name: "auth-username",
        set: |_, o, l| {
            let v = unquoted(l)?;
            o.set(move |s| s.smtp.auth_username.clone_from(&v));
            Ok(())
        },
    },
    Directive {
        name: "auth-password",
        set: |_, o, l| {
            let v = Secret(unquoted(l)?);
            o.set(move |s| s.smtp.auth_password = v.clone());
            Ok(())
        },
    },
    flag!("use-unencrypted-plain-auth", smtp.use_unencrypted_plain_auth),
    Directive {
        name: "remove-header",
        set: |_, o, l| {
            let names = crate::directives::header_list(l);
            o.set(move |s| s.smtp.remove_header = names.clone());
            Ok(())
        },
    },
    flag!("log-connections", smtp.log.connections),
    flag!("log-commands", smtp.log.commands),
    flag!("log-data", smtp.log.data),
    Directive {
        name: "type",
        set: |b, o, l| {
            let v = l.choice(&[
                ("smtp", DeliveryType::Smtp),
                ("discard", DeliveryType::Discard),
                ("pipe", DeliveryType::Held),
                ("file", DeliveryType::Held),
                ("http-delivery", DeliveryType::Held),
            ])?;
            if v == DeliveryType::Held {
                b.warn(
                    l.span,
                    format!("`type {}` is not implemented: this destination's mail is held, not delivered", l.args[0]),
                );
            }
            o.set(move |s| s.delivery_type = v);
            Ok(())
        },
    },
    flag!("discard-as-bounce", discard_as_bounce),
    Directive { name: "reroute-to-virtual-mta", set: |b, o, l| reroute(b, o, l, false) },
    value!("cluster-max-msg-rate", rate_limit, cluster_max_msg_rate),
    Directive {
        name: "cluster-max-smtp-out",
        set: |_, o, l| {
            let n = l.value(units::parse_count_or_unlimited(l.one()?))?;
            if n == Some(0) {
                return Err(l.err("cluster-max-smtp-out 0 would never deliver", "use at least 1"));
            }
            o.set(move |s| s.cluster_max_smtp_out = n);
            Ok(())
        },
    },
    Directive { name: "backoff-reroute-to-virtual-mta", set: |b, o, l| reroute(b, o, l, true) },
    Directive {
        name: "max-cold-virtual-mta-msg",
        set: |_, o, l| {
            // `N/d[,N/day...]`: a limit per day, the last one on.
            let mut limits = Vec::new();
            for item in l.args.join(",").split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let (n, per) = item.split_once('/').unwrap_or((item, "d"));
                let n: u32 = n.parse().map_err(|_| l.err(format!("`{item}` is not N/day"), "write `1000/day`"))?;
                if !["d", "day"].contains(&per.to_ascii_lowercase().as_str()) {
                    return Err(l.err(format!("`{item}`: cold VMTA limits are per day"), "write `1000/day`"));
                }
                limits.push(n);
            }
            if limits.is_empty() {
                return Err(l.err("`max-cold-virtual-mta-msg` needs a limit", "write `1000/day`"));
            }
            o.set(move |s| s.max_cold_msg = limits.clone());
            Ok(())
        },
    },
    Directive {
        name: "bounce-upon-no-mx",
        set: |_, o, l| {
            // true: at once; false/never: never; an interval: mail queued at least that long.
            let v = l.one()?;
            let after = match units::parse_bool(v) {
                Ok(true) => Some(std::time::Duration::ZERO),
                Ok(false) => None,
                Err(_) => l.value(units::parse_duration_or_never(v))?,
            };
            o.set(move |s| s.bounce_upon_no_mx = after);
            Ok(())
        },
    },
    Directive { name: "route", set: smtp_hosts },
];

fn max_smtp_out(_: &mut crate::build::Builder, o: &mut DomainOverrides, l: &Line) -> Result<(), ConfigError> {
    let n = l.count()?;
    if n == 0 {
        return Err(l.err("max-smtp-out 0 would never deliver", "use at least 1 (or `max-msg-rate 0` to hold mail)"));
    }
    o.set(move |s| s.max_smtp_out = n);
    Ok(())
}

/// `smtp-hosts H1, H2; H3` (`""` clears an inherited list).
fn smtp_hosts(_: &mut crate::build::Builder, o: &mut DomainOverrides, l: &Line) -> Result<(), ConfigError> {
    let text = l.args.join(" ");
    let hosts = if text.trim().is_empty() { None } else { Some(l.value(units::parse_smtp_hosts(&text))?) };
    o.set(move |s| s.smtp_hosts = hosts.clone());
    Ok(())
}

/// `dkim-headers List-Unsubscribe, Feedback-ID`: header fields signed besides the ones
/// always signed when present (PowerMTA's rule: the listed ones add to the default set).
/// Which signature a `dkim-*` directive sets: the first, or the second (`second-dkim-*`).
type Which = fn(&mut DomainSettings) -> &mut DkimOptions;

fn first(s: &mut DomainSettings) -> &mut DkimOptions {
    &mut s.dkim
}

fn second(s: &mut DomainSettings) -> &mut DkimOptions {
    &mut s.second_dkim
}

fn dkim_headers(o: &mut DomainOverrides, l: &Line, which: Which) -> Result<(), ConfigError> {
    let extra: Vec<String> =
        l.args.join(",").split([',', ':']).map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect();
    o.set(move |s| {
        let headers = &mut which(s).headers;
        for h in &extra {
            if !headers.iter().any(|have| have.eq_ignore_ascii_case(h)) {
                headers.push(h.clone());
            }
        }
    });
    Ok(())
}

/// `relaxed` or `simple` (RFC 6376 §3.4), for headers or body.
fn canon(o: &mut DomainOverrides, l: &Line, headers: bool, which: Which) -> Result<(), ConfigError> {
    let relaxed = l.choice(&[("relaxed", true), ("simple", false)])?;
    match headers {
        true => o.set(move |s| which(s).header_relaxed = relaxed),
        false => o.set(move |s| which(s).body_relaxed = relaxed),
    }
    Ok(())
}

/// `sender-or-from` (the default) and `strict-from`: the From (or Sender) domain signs;
/// `@domain` or `user@domain`: that domain signs, with that `i=`.
fn dkim_identity(o: &mut DomainOverrides, l: &Line, which: Which) -> Result<(), ConfigError> {
    let v = l.one()?;
    let identity =
        (!["sender-or-from", "strict-from"].iter().any(|k| v.eq_ignore_ascii_case(k))).then(|| v.to_string());
    o.set(move |s| which(s).identity = identity.clone());
    Ok(())
}

fn dkim_expire_after(o: &mut DomainOverrides, l: &Line, which: Which) -> Result<(), ConfigError> {
    let v = l.value(units::parse_duration_or_never(l.one()?))?;
    o.set(move |s| which(s).expire_after = v);
    Ok(())
}

/// `reroute-to-virtual-mta NAME` / `backoff-reroute-to-virtual-mta NAME` (`""` clears).
fn reroute(b: &mut crate::build::Builder, o: &mut DomainOverrides, l: &Line, backoff: bool) -> Result<(), ConfigError> {
    let text = l.args.join(" ");
    let name = text.trim().trim_matches('"').to_string();
    let target = (!name.is_empty()).then_some(name);
    if let Some(t) = &target {
        // A VMTA, not a pool (PowerMTA does not reroute to pools either).
        b.member_refs.push((t.clone(), l.span.clone()));
    }
    match backoff {
        true => o.set(move |s| s.backoff_reroute_to = target.clone()),
        false => o.set(move |s| s.reroute_to = target.clone()),
    }
    Ok(())
}

/// A value that may be `""` (clearing one inherited): the text without its quotes.
fn unquoted(l: &Line) -> Result<String, ConfigError> {
    if l.args.is_empty() {
        return Ok(String::new());
    }
    let v = l.args.join(" ");
    Ok(v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).map(str::to_string).unwrap_or(v))
}
