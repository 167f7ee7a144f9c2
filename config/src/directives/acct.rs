//! `<acct-file PATH>`: an accounting file and what it records.

use crate::build::{near, BlockRef, Builder, Directive, Line, Scope};
use crate::model::*;
use crate::units;
use crate::ConfigError;
use std::path::PathBuf;

pub(crate) const SCOPE: Scope<AcctFile> = Scope {
    name: "acct-file",
    directives: &[
        Directive { name: "records", set: records },
        Directive { name: "record-fields", set: record_fields },
        Directive { name: "privacy-policy", set: privacy_policy },
        Directive {
            name: "max-size",
            set: |_, a, l| {
                a.max_size = Some(l.size()?);
                Ok(())
            },
        },
        Directive {
            name: "delete-after",
            set: |_, a, l| {
                a.delete_after = l.value(units::parse_duration_or_never(l.one()?))?;
                Ok(())
            },
        },
    ],
    blocks: &[],
};

pub(crate) fn block(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let path = r.arg("/var/log/sluice/acct.csv")?;
    let mut a = AcctFile {
        path: PathBuf::from(path),
        records: vec![RecordType::Delivered, RecordType::Bounced],
        fields: None,
        privacy_key: None,
        max_size: None,
        delete_after: None,
    };
    b.run(&SCOPE, &mut a, r.children);
    b.config.acct_files.push(a);
    Ok(())
}

/// A record type by its code or its long name.
pub(crate) fn record_type(v: &str) -> Option<RecordType> {
    Some(match v.to_ascii_lowercase().as_str() {
        "d" | "delivery" | "delivered" => RecordType::Delivered,
        "b" | "bounce" | "bounced" => RecordType::Bounced,
        "t" | "transient" => RecordType::Transient,
        "tq" | "transient-queue" => RecordType::QueueEvent,
        "r" | "receipt" | "received" => RecordType::Received,
        "f" | "feedback-loop" => RecordType::Feedback,
        "rb" | "remote-bounce" => RecordType::RemoteBounce,
        "rs" | "remote-status" => RecordType::RemoteStatus,
        _ => return None,
    })
}

const RECORD_NAMES: &[&str] = &[
    "d",
    "b",
    "t",
    "tq",
    "r",
    "f",
    "rb",
    "rs",
    "delivery",
    "bounce",
    "transient",
    "transient-queue",
    "receipt",
    "feedback-loop",
    "remote-bounce",
    "remote-status",
    "all",
];

/// `records d,b` / `records delivery, bounce` / `records all`.
fn records(b: &mut Builder, a: &mut AcctFile, l: &Line) -> Result<(), ConfigError> {
    a.records.clear();
    for r in l.list() {
        if r.eq_ignore_ascii_case("all") {
            a.records = RecordType::ALL.to_vec();
            continue;
        }
        match record_type(&r) {
            Some(RecordType::RemoteStatus) => b.warn(
                l.span,
                format!("accounting record type `{r}` (remote status reports) is not written yet; ignored"),
            ),
            Some(t) if !a.records.contains(&t) => a.records.push(t),
            Some(_) => {}
            None => {
                return Err(l.err(
                    format!("unknown record type `{r}`"),
                    near(&r, RECORD_NAMES, "use d, b, t, tq, r, f, rb, rs or all"),
                ))
            }
        }
    }
    Ok(())
}

/// `record-fields TYPE FIELDS`: `d *,header_Subject`.
fn record_fields(_: &mut Builder, a: &mut AcctFile, l: &Line) -> Result<(), ConfigError> {
    let list = match l.args {
        [types, rest @ ..]
            if !rest.is_empty() && types.split(',').filter(|t| !t.is_empty()).all(|t| record_type(t).is_some()) =>
        {
            rest.join(",")
        }
        _ => l.args.join(","),
    };
    let chosen = a.fields.get_or_insert_with(Vec::new);
    for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if let Some(name) = f.strip_prefix("header_") {
            // RFC 5322 §3.6.8: a field name is printable ASCII but the colon.
            if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
                return Err(l.err(
                    format!("`{f}` does not name a header field"),
                    "write e.g. `header_Subject` or `header_List-Id`",
                ));
            }
            chosen.push(f.to_string());
        } else if f == "*" || ACCT_FIELDS.contains(&f) {
            chosen.push(f.to_string());
        } else {
            return Err(l.err(format!("unknown accounting field `{f}`"), near(f, ACCT_FIELDS, "")));
        }
    }
    Ok(())
}

fn privacy_policy(_: &mut Builder, a: &mut AcctFile, l: &Line) -> Result<(), ConfigError> {
    match l.args {
        [kind, key] if kind.eq_ignore_ascii_case("hmac-sha256") => {
            a.privacy_key = Some(key.clone());
            Ok(())
        }
        _ => Err(l.err("`privacy-policy` takes hmac-sha256 and a key", "write `privacy-policy hmac-sha256 SECRETKEY`")),
    }
}
