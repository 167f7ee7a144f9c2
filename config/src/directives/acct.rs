//! `<acct-file PATH>` / `<acct-file |COMMAND>`: an accounting file (or pipe) and what it
//! records (PowerMTA User's Guide 3.3.11 and chapter 11).

use crate::acct::{field_names, AcctField, AcctFile, AcctSink, RecordType};
use crate::build::{near, BlockRef, Builder, Directive, Line, Scope};
use crate::units;
use crate::ConfigError;
use std::path::PathBuf;

pub(crate) const SCOPE: Scope<AcctFile> = Scope {
    name: "acct-file",
    directives: &[
        Directive { name: "records", set: records },
        Directive { name: "record-fields", set: record_fields },
        Directive { name: "map-header-to-field", set: map_header },
        Directive { name: "privacy-policy", set: privacy_policy },
        Directive {
            name: "max-size",
            set: |_, a, l| {
                a.max_size = Some(l.size()?);
                Ok(())
            },
        },
        Directive {
            name: "move-interval",
            set: |_, a, l| {
                let d = l.duration()?;
                if d.as_secs() < 1 {
                    return Err(l.err("move-interval must be at least a second", "write e.g. `move-interval 5m`"));
                }
                a.move_interval = Some(d);
                Ok(())
            },
        },
        Directive {
            name: "move-to",
            set: |_, a, l| {
                a.move_to = Some(l.path(l.one()?));
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
        Directive {
            name: "world-readable",
            set: |_, a, l| {
                a.world_readable = l.bool()?;
                Ok(())
            },
        },
        Directive {
            name: "iso-times",
            set: |_, a, l| {
                a.iso_times = l.bool()?;
                Ok(())
            },
        },
        Directive {
            name: "user-string",
            set: |_, a, l| {
                a.user_string = l.text();
                Ok(())
            },
        },
    ],
    blocks: &[],
};

/// `<acct-file /path/acct.csv>` (files `acct-YYYY-MM-DD-NNNN.csv` there) or
/// `<acct-file |/usr/bin/handler --option>` (a program fed on its standard input).
pub(crate) fn block(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let target = r.arg("/var/log/sluice/acct.csv")?;
    let sink = match target.strip_prefix('|') {
        Some(command) if !command.trim().is_empty() => AcctSink::Pipe(command.trim().to_string()),
        Some(_) => {
            return Err(ConfigError::at(
                r.span,
                "`<acct-file |>` names no program",
                "write `<acct-file |/usr/bin/handler>`",
            ))
        }
        None => AcctSink::File(PathBuf::from(target)),
    };
    let mut a = AcctFile::new(sink);
    b.run(&SCOPE, &mut a, r.children);
    b.config.acct_files.push(a);
    Ok(())
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

fn record_type(l: &Line, v: &str) -> Result<RecordType, ConfigError> {
    RecordType::parse(v).ok_or_else(|| {
        l.err(format!("unknown record type `{v}`"), near(v, RECORD_NAMES, "use d, b, t, tq, r, f, rb, rs or all"))
    })
}

/// `records d,b` / `records delivery, bounce` / `records all`.
fn records(b: &mut Builder, a: &mut AcctFile, l: &Line) -> Result<(), ConfigError> {
    a.records.clear();
    for r in l.args.join(",").split([',', ' ']).map(str::trim).filter(|r| !r.is_empty()) {
        let types = match r.eq_ignore_ascii_case("all") {
            true => RecordType::ALL.to_vec(),
            false => vec![record_type(l, r)?],
        };
        for t in types {
            if t == RecordType::RemoteStatus {
                b.warn(l.span, "`rs` records (remote status reports) are not written yet");
            }
            if !a.records.contains(&t) {
                a.records.push(t);
            }
        }
    }
    Ok(())
}

/// `record-fields TYPE FIELDS`: `d *,header_Subject`, `b *,!orcpt`, `b timeQueued,bounceCat`
/// (a field list without `*` is the whole list; `type` is always the first column).
fn record_fields(_: &mut Builder, a: &mut AcctFile, l: &Line) -> Result<(), ConfigError> {
    let hint = "write e.g. `record-fields d *,header_Message-Id` or `record-fields b *,!orcpt`";
    let [types, rest @ ..] = l.args else {
        return Err(l.err("`record-fields` takes a record type and a field list", hint));
    };
    if rest.is_empty() {
        return Err(l.err("`record-fields` takes a record type and a field list", hint));
    }
    let types: Result<Vec<RecordType>, _> =
        types.split(',').filter(|t| !t.is_empty()).map(|t| record_type(l, t)).collect();
    let types = types?;
    let names = field_names().collect::<Vec<_>>();
    for t in types {
        let mut fields: Vec<AcctField> = Vec::new();
        for f in rest.join(",").split(',').map(str::trim).filter(|f| !f.is_empty()) {
            if f == "*" {
                for d in crate::acct::default_fields(t) {
                    if !fields.contains(&d) {
                        fields.push(d);
                    }
                }
                continue;
            }
            let (exclude, name) = match f.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, f),
            };
            let field = AcctField::parse(name).ok_or_else(|| {
                l.err(format!("unknown accounting field `{name}`"), near(name, &names, "see the Guide's chapter 11"))
            })?;
            match (exclude, field) {
                (_, AcctField::Type) => {} // always the first column
                (true, field) => fields.retain(|g| *g != field),
                (false, field) if !fields.contains(&field) => fields.push(field),
                (false, _) => {}
            }
        }
        a.fields.retain(|(ft, _)| *ft != t);
        a.fields.push((t, fields));
    }
    Ok(())
}

/// `map-header-to-field TYPE header_NAME FIELD`.
fn map_header(_: &mut Builder, a: &mut AcctFile, l: &Line) -> Result<(), ConfigError> {
    let hint = "write e.g. `map-header-to-field d header_X-Recipient rcpt`";
    let [t, header, field] = l.args else {
        return Err(l.err("`map-header-to-field` takes a record type, header_NAME and a field", hint));
    };
    let t = record_type(l, t)?;
    if t == RecordType::QueueEvent {
        return Err(l.err("`tq` records have no message headers", hint));
    }
    let Some(AcctField::Header(header)) = AcctField::parse(header) else {
        return Err(l.err(format!("`{header}` is not header_NAME"), hint));
    };
    let field = AcctField::parse(field).ok_or_else(|| l.err(format!("unknown accounting field `{field}`"), hint))?;
    a.header_map.push((t, header, field));
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
