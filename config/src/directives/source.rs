//! `<source CIDR|NAME>` (who injects, and what they may do) and `<smtp-user NAME>`.

use crate::build::{BlockRef, Builder, Directive, Line, Scope};
use crate::model::*;
use crate::overrides::SourceOverrides;
use crate::units;
use crate::ConfigError;

pub(crate) const SCOPE: Scope<SourceOverrides> = Scope { name: "source", directives: DIRECTIVES, blocks: &[] };

const DIRECTIVES: &[Directive<SourceOverrides>] = &[
    flag!("always-allow-relaying", always_allow_relaying),
    flag!("smtp-service", smtp_service),
    flag!("process-x-virtual-mta", process_x_virtual_mta),
    flag!("retain-x-virtual-mta", retain_x_virtual_mta),
    flag!("reject-invalid-virtual-mta", reject_invalid_virtual_mta),
    flag!("add-received-header", add_received_header),
    flag!("hide-message-source", hide_message_source),
    flag!("generate-bounces", generate_bounces),
    Directive {
        // PowerMTA's name for the opposite of `generate-bounces`.
        name: "suppress-local-dsn",
        set: |_, o, l| {
            let suppress = l.bool()?;
            o.set(move |p| p.generate_bounces = !suppress);
            Ok(())
        },
    },
    flag!("add-x-virtual-mta-header", add_x_virtual_mta_header),
    flag!("allow-auth", allow_auth),
    flag!("remove-received-headers", headers.remove_received),
    flag!("add-message-id-header", headers.add_message_id),
    flag!("process-x-envid", headers.process_x_envid),
    flag!("allow-unencrypted-plain-auth", allow_unencrypted_plain_auth),
    flag!("verp-default", verp),
    flag!("allow-smtputf8", allow_smtputf8),
    flag!("allow-chunking", allow_chunking),
    Directive {
        name: "remove-header",
        set: |_, o, l| {
            // `""` clears an inherited list.
            let names = crate::directives::header_list(l);
            o.set(move |p| p.headers.remove = names.clone());
            Ok(())
        },
    },
    Directive {
        name: "add-date-header",
        set: |_, o, l| {
            let v = match l.one()?.to_ascii_lowercase().as_str() {
                "override" => AddDate::Override,
                _ => match l.bool()? {
                    true => AddDate::Yes,
                    false => AddDate::No,
                },
            };
            o.set(move |p| p.headers.add_date = v);
            Ok(())
        },
    },
    Directive {
        name: "date-header-time",
        set: |_, o, l| {
            let delivery = l.choice(&[("reception", false), ("delivery", true)])?;
            o.set(move |p| p.headers.date_at_delivery = delivery);
            Ok(())
        },
    },
    Directive {
        name: "pattern-list",
        set: |b, o, l| {
            let name = l.one()?.to_string();
            b.vmta_pattern_refs.push((name.clone(), l.span.clone()));
            o.set(move |p| p.pattern_list = Some(name.clone()));
            Ok(())
        },
    },
    Directive {
        name: "traffic-class",
        set: |b, o, l| {
            let name = l.one()?.to_string();
            b.class_refs.push((name.clone(), l.span.clone()));
            o.set(move |p| p.traffic_class = Some(name.clone()));
            Ok(())
        },
    },
    Directive {
        name: "rewrite-list",
        set: |b, o, l| {
            let name = l.one()?.to_string();
            b.rewrite_refs.push((name.clone(), l.span.clone()));
            o.set(move |p| p.rewrite_list = Some(name.clone()));
            Ok(())
        },
    },
    flag!("log-connections", log.connections),
    flag!("log-commands", log.commands),
    flag!("log-data", log.data),
    flag!("allow-starttls", allow_starttls),
    flag!("require-auth", require_auth),
    flag!("require-starttls-before-auth", require_starttls_before_auth),
    flag!("check-spf-inbound", check_spf),
    flag!("check-dkim-inbound", check_dkim),
    flag!("check-dmarc-inbound", check_dmarc),
    flag!("check-arc-inbound", check_arc),
    flag!("check-iprev-inbound", check_iprev),
    flag!("reject-iprev-check-fail", reject_iprev_fail),
    flag!("reject-iprev-check-permerror", reject_iprev_permerror),
    flag!("reject-iprev-check-temperror", reject_iprev_temperror),
    flag!("process-x-job", process_x_job),
    flag!("process-x-traffic-class", process_x_traffic_class),
    flag!("retain-x-job", retain_x_job),
    Directive {
        name: "max-message-size",
        set: |_, o, l| {
            let max = l.value(units::parse_size_limit(l.one()?))?.unwrap_or(u64::MAX);
            o.set(move |p| p.max_message_size = max);
            Ok(())
        },
    },
    value!("max-rcpt-per-message", count_or_unlimited, max_rcpt_per_message),
    flag!("too-many-rcpts-fails-message", too_many_rcpts_fails_message),
    flag!("allow-mailmerge", allow_mailmerge),
    // The Guide: "currently equivalent to setting allow-mailmerge yes".
    flag!("always-allow-api-submission", allow_mailmerge),
    flag!("reject-spf-check-fail", reject_spf_fail),
    flag!("reject-spf-check-permerror", reject_spf_permerror),
    flag!("reject-spf-check-temperror", reject_spf_temperror),
    Directive {
        name: "bcc",
        set: |_, o, l| {
            let v = l.one()?.trim_matches(|c| c == '<' || c == '>' || c == '"').to_string();
            if !v.is_empty() && !v.contains('@') {
                return Err(l.err(format!("`{v}` is not an address"), "write `bcc archive@example.com`"));
            }
            let v = (!v.is_empty()).then_some(v);
            o.set(move |p| p.bcc.clone_from(&v));
            Ok(())
        },
    },
    // PowerMTA's place for them; over the global settings.
    value!("smtp-command-timeout", some_duration, smtp_command_timeout),
    value!("smtp-data-timeout", some_duration, smtp_data_timeout),
    Directive {
        name: "dsn-return-default",
        set: |_, o, l| {
            let v =
                l.choice(&[("full", Some(DsnReturn::Full)), ("headers", Some(DsnReturn::Headers)), ("system", None)])?;
            o.set(move |p| p.dsn_return_default = v);
            Ok(())
        },
    },
    value!("max-message-hops", count_or_unlimited, max_message_hops),
    Directive {
        name: "default-virtual-mta",
        set: |b, o, l| {
            let target = l.one()?.to_string();
            b.vmta_refs.push((target.clone(), l.span.clone()));
            o.set(move |p| p.default_virtual_mta = Some(target.clone()));
            Ok(())
        },
    },
    Directive {
        name: "smtp-max-auth-failure-rate",
        set: |_, o, l| {
            let rate = l.rate()?;
            o.set(move |p| p.max_auth_failure_rate = rate);
            Ok(())
        },
    },
    Directive { name: "allowed-mail-from-domain", set: restriction },
    Directive { name: "allowed-virtual-mta", set: restriction },
    Directive {
        name: "jobid-header",
        set: |_, o, l| {
            let h = l.one()?.to_ascii_lowercase();
            o.set(move |p| p.jobid_header = h.clone());
            Ok(())
        },
    },
    Directive {
        name: "bare-lf",
        set: |_, o, l| {
            let v = l.choice(&[("normalize", BareLf::Normalize), ("reject", BareLf::Reject)])?;
            o.set(move |p| p.bare_lf = v);
            Ok(())
        },
    },
    Directive {
        name: "long-lines",
        set: |_, o, l| {
            let v = l.choice(&[("encode", LongLines::Encode), ("reject", LongLines::Reject)])?;
            o.set(move |p| p.long_lines = v);
            Ok(())
        },
    },
    Directive {
        name: "suppression-lists",
        set: |b, o, l| {
            let lists = l.list();
            for list in &lists {
                b.list_refs.push((list.clone(), l.span.clone()));
            }
            o.set(move |p| p.suppression_lists.extend(lists.iter().cloned()));
            Ok(())
        },
    },
    Directive {
        name: "arc-sign",
        set: |b, o, l| {
            let v = l.bool()?;
            if v {
                b.arc_sign_refs.push(l.span.clone());
            }
            o.set(move |p| p.arc_sign = v);
            Ok(())
        },
    },
];

/// `allowed-mail-from-domain D[,D...]` / `allowed-virtual-mta V[,V...]`, repeatable.
fn restriction(b: &mut Builder, o: &mut SourceOverrides, l: &Line) -> Result<(), ConfigError> {
    let (domains, vmtas) = restriction_lists(b, l);
    o.set(move |p| {
        p.restrictions.mail_from_domains.extend(domains.iter().cloned());
        p.restrictions.virtual_mtas.extend(vmtas.iter().cloned());
    });
    Ok(())
}

/// The domains or VMTAs an `allowed-*` line names (the other list empty).
fn restriction_lists(b: &mut Builder, l: &Line) -> (Vec<String>, Vec<String>) {
    let items = l.list();
    if l.name == "allowed-mail-from-domain" {
        (items.iter().map(|d| d.trim_end_matches('.').to_ascii_lowercase()).collect(), Vec::new())
    } else {
        for v in &items {
            b.vmta_refs.push((v.clone(), l.span.clone()));
        }
        (Vec::new(), items)
    }
}

/// `<source 10.0.0.0/8>` (also `10/8`, `0/0`, one address) or `<source NAME>` /
/// `<source {NAME}>`: a named policy, applied on top of the address's when a listener
/// (`source=NAME`) or an SMTP user (`source NAME`) names it. `{auth}` is every authenticated
/// session's.
pub(crate) fn block(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let arg = r.arg("10.0.0.0/8")?;
    let mut o = SourceOverrides::default();
    b.run(&SCOPE, &mut o, r.children);
    match units::parse_cidr(arg) {
        Ok(cidr) => match b.sources.iter_mut().find(|(c, _)| *c == cidr) {
            Some((_, existing)) => existing.extend(o),
            None => b.sources.push((cidr, o)),
        },
        Err(_) => b.named_sources.entry_or_default(arg).extend(o),
    }
    Ok(())
}

/// `<smtp-user NAME>`: credentials for SMTP AUTH and the named source the session takes.
pub(crate) fn smtp_user(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let name = r.arg("injector1")?;
    let mut user = SmtpUser {
        name: name.to_string(),
        password: String::new(),
        source: "{auth}".into(),
        restrictions: SenderRestrictions::default(),
        span: r.span.clone(),
    };
    b.run(&USER, &mut user, r.children);
    if user.password.is_empty() {
        return Err(ConfigError::at(
            r.span,
            format!("smtp-user `{name}` has no password"),
            "add `password SECRET` (or a $argon2id$/$6$ hash)",
        ));
    }
    b.source_refs.push((user.source.clone(), r.span.clone()));
    b.config.smtp_users.insert(name.to_string(), user);
    Ok(())
}

pub(crate) const USER: Scope<SmtpUser> = Scope {
    name: "smtp-user",
    directives: &[
        Directive {
            name: "password",
            set: |_, u, l| {
                u.password = l.one()?.to_string();
                Ok(())
            },
        },
        Directive {
            name: "source",
            set: |_, u, l| {
                u.source = l.one()?.to_string();
                Ok(())
            },
        },
        Directive { name: "allowed-mail-from-domain", set: user_restriction },
        Directive { name: "allowed-virtual-mta", set: user_restriction },
    ],
    blocks: &[],
};

fn user_restriction(b: &mut Builder, u: &mut SmtpUser, l: &Line) -> Result<(), ConfigError> {
    let (domains, vmtas) = restriction_lists(b, l);
    u.restrictions.mail_from_domains.extend(domains);
    u.restrictions.virtual_mtas.extend(vmtas);
    Ok(())
}
