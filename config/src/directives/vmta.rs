//! `<virtual-mta NAME>` and `<virtual-mta-pool NAME>`.

use super::global::{domain_block, domain_key};
use crate::build::{Block, BlockRef, Builder, Directive, Line, Scope};
use crate::model::*;
use crate::overrides::DomainBlocks;
use crate::units;
use crate::ConfigError;

/// The most addresses one `smtp-source-host` range or CIDR may name.
const SOURCE_ADDRESSES_MAX: usize = 4096;

pub(crate) const VMTA: Scope<VirtualMta> = Scope {
    name: "virtual-mta",
    directives: &[
        Directive { name: "smtp-source-host", set: source_host },
        Directive {
            name: "host-name",
            set: |_, v, l| {
                v.host_name = Some(l.one()?.to_string());
                Ok(())
            },
        },
        Directive {
            name: "domain-key",
            set: |_, v, l| {
                v.domain_keys.push(domain_key(l)?);
                Ok(())
            },
        },
        Directive {
            name: "cold-virtual-mta",
            set: |b, v, l| {
                let name = l.one()?.to_string();
                b.member_refs.push((name.clone(), l.span.clone()));
                v.cold.push(name);
                Ok(())
            },
        },
        Directive {
            name: "rewrite-list",
            set: |b, v, l| {
                let name = l.one()?.to_string();
                b.rewrite_refs.push((name.clone(), l.span.clone()));
                v.rewrite_list = Some(name);
                Ok(())
            },
        },
    ],
    blocks: &[Block {
        name: "domain",
        open: |b, v, r| {
            let mut blocks = std::mem::take(&mut v.domains);
            let result = domain_block(b, r, &mut blocks);
            v.domains = blocks;
            result
        },
    }],
};

/// `smtp-source-host IP HOSTNAME`: bind this address, say this name in EHLO.
/// A VMTA binds one address here: a range or CIDR binds its first address, with a warning.
pub(crate) fn source_host(b: &mut Builder, v: &mut VirtualMta, l: &Line) -> Result<(), ConfigError> {
    let [ip, host] = l.args else {
        return Err(l.err(
            "`smtp-source-host` takes an IP address and a host name",
            "write `smtp-source-host 192.0.2.10 mta1.example.com`",
        ));
    };
    let ips =
        l.value(units::parse_ip_set(ip, SOURCE_ADDRESSES_MAX)).map_err(|e| match ip.parse::<std::net::IpAddr>() {
            Ok(_) => e,
            Err(_) if host.parse::<std::net::IpAddr>().is_ok() => l.err(
                format!("`{ip}` is not an IP address"),
                format!("the address comes first: `smtp-source-host {host} {ip}`"),
            ),
            Err(_) => e,
        })?;
    if ips.len() > 1 {
        b.warn(
            l.span,
            format!(
                "`{ip}` names {} addresses; this virtual MTA sends from the first, {} (give each address its own <virtual-mta> and group them in a <virtual-mta-pool>)",
                ips.len(),
                ips[0]
            ),
        );
    }
    v.source_ip = ips.first().copied();
    v.host_name = Some(host.clone());
    Ok(())
}

pub(crate) fn vmta_block(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let name = r.arg("mta1")?;
    let mut vmta = VirtualMta { name: name.to_string(), ..Default::default() };
    b.run(&VMTA, &mut vmta, r.children);
    if b.config.pools.contains_key(name) || b.config.vmtas.insert(name.to_string(), vmta).is_some() {
        return Err(ConfigError::at(
            r.span,
            format!("`{name}` is defined twice"),
            "give each virtual MTA and pool its own name",
        ));
    }
    Ok(())
}

/// What a `<virtual-mta-pool>` holds while it is read.
#[derive(Default)]
pub(crate) struct Pool {
    members: Vec<String>,
    domains: DomainBlocks,
    keys: Vec<DomainKey>,
    rewrite_list: Option<String>,
}

pub(crate) const POOL: Scope<Pool> = Scope {
    name: "virtual-mta-pool",
    directives: &[
        Directive {
            name: "virtual-mta",
            set: |b, p, l| {
                let member = l.one()?.to_string();
                b.member_refs.push((member.clone(), l.span.clone()));
                p.members.push(member);
                Ok(())
            },
        },
        Directive {
            name: "domain-key",
            set: |_, p, l| {
                p.keys.push(domain_key(l)?);
                Ok(())
            },
        },
        Directive {
            name: "rewrite-list",
            set: |b, p, l| {
                let name = l.one()?.to_string();
                b.rewrite_refs.push((name.clone(), l.span.clone()));
                p.rewrite_list = Some(name);
                Ok(())
            },
        },
    ],
    blocks: &[Block {
        name: "domain",
        open: |b, p, r| {
            let mut blocks = std::mem::take(&mut p.domains);
            let result = domain_block(b, r, &mut blocks);
            p.domains = blocks;
            result
        },
    }],
};

pub(crate) fn pool_block(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let name = r.arg("pool1")?;
    let mut pool = Pool::default();
    b.run(&POOL, &mut pool, r.children);
    b.config.pool_domains.insert(name.to_string(), pool.domains);
    b.config.pool_domain_keys.insert(name.to_string(), pool.keys);
    if let Some(list) = pool.rewrite_list {
        b.config.pool_rewrite_lists.insert(name.to_string(), list);
    }
    if pool.members.is_empty() {
        return Err(ConfigError::at(r.span, format!("pool `{name}` has no members"), "add `virtual-mta NAME` lines"));
    }
    if b.config.vmtas.contains_key(name) || b.config.pools.insert(name.to_string(), pool.members).is_some() {
        return Err(ConfigError::at(
            r.span,
            format!("`{name}` is defined twice"),
            "give each virtual MTA and pool its own name",
        ));
    }
    Ok(())
}
