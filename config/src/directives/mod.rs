//! The directive tables: for each kind of block, the directives sluice reads (name and
//! parser) and the blocks it opens inside. `crate::build` runs them; a name in no table is
//! checked against PowerMTA's list (`crate::known`).

/// A yes/no directive setting one field of a scope's settings.
macro_rules! flag {
    ($name:literal, $($field:ident).+) => {
        Directive {
            name: $name,
            set: |_, o, l| {
                let v = l.bool()?;
                o.set(move |s| s.$($field).+ = v);
                Ok(())
            },
        }
    };
}

/// A global yes/no directive setting one field of the `Config`.
macro_rules! config_flag {
    ($name:literal, $field:ident) => {
        Directive {
            name: $name,
            set: |b, _, l| {
                b.config.$field = l.bool()?;
                Ok(())
            },
        }
    };
}

/// A directive whose value one parser of `Line` gives, set into one field.
macro_rules! value {
    ($name:literal, $parse:ident, $($field:ident).+) => {
        Directive {
            name: $name,
            set: |_, o, l| {
                let v = l.$parse()?;
                o.set(move |s| s.$($field).+ = v.clone());
                Ok(())
            },
        }
    };
}

pub(crate) mod acct;
pub(crate) mod domain;
pub(crate) mod global;
pub(crate) mod lists;
pub(crate) mod source;
pub(crate) mod vmta;

use crate::build::Scope;

/// One scope's table as names: (scope, directives, blocks).
pub type TableNames = (&'static str, Vec<&'static str>, Vec<&'static str>);

fn names<T>(s: &Scope<T>) -> TableNames {
    (s.name, s.directives.iter().map(|d| d.name).collect(), s.blocks.iter().map(|b| b.name).collect())
}

/// Every table sluice has, by scope.
pub fn tables() -> Vec<TableNames> {
    let mut t = vec![
        names(&global::SCOPE),
        names(&source::SCOPE),
        names(&source::USER),
        names(&domain::SCOPE),
        names(&vmta::VMTA),
        names(&vmta::POOL),
        names(&vmta::PROXY),
        names(&global::TRANSMISSIONS_API),
        names(&global::API_LISTENER),
        names(&acct::SCOPE),
        names(&global::LISTENER),
        names(&global::SPOOL),
        names(&lists::ADDRESS_LIST),
        names(&lists::FEEDBACK_PROCESSOR),
        names(&lists::BOUNCE_PROCESSOR),
        names(&lists::PATTERN_LIST),
        names(&lists::VMTA_PATTERN_LIST),
        names(&lists::REWRITE_LIST),
        names(&lists::MX_ROLLUP_LIST),
        names(&lists::CLUSTER),
    ];
    // `<bounce-category-patterns>` holds regex lines, not directives.
    t.push(("bounce-category-patterns", Vec::new(), Vec::new()));
    t
}

/// The scopes whose tables read `name` (as a block when `block`).
pub(crate) fn scopes_reading(name: &str, block: bool) -> Vec<&'static str> {
    tables()
        .into_iter()
        .filter(|(_, d, b)| if block { b.contains(&name) } else { d.contains(&name) })
        .map(|(s, _, _)| s)
        .collect()
}

/// Every name sluice reads in `scope`.
pub(crate) fn names_in(scope: &str) -> Vec<&'static str> {
    tables().into_iter().filter(|(s, _, _)| *s == scope).flat_map(|(_, d, b)| d.into_iter().chain(b)).collect()
}

/// A list of header field names (`remove-header A, B`); `""` is the empty list.
pub(crate) fn header_list(l: &crate::build::Line) -> Vec<String> {
    l.args
        .join(",")
        .split([',', ' '])
        .map(|h| h.trim().trim_matches('"').trim_end_matches(':'))
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}
