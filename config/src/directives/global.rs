//! Directives outside any block, and the blocks opened there.

use super::{acct, lists, source, vmta};
use crate::build::{Block, BlockRef, Builder, Directive, Line, Scope};
use crate::model::*;
use crate::overrides::{DomainBlocks, DomainPattern};
use crate::units::{self, Cidr};
use crate::ConfigError;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub(crate) const SCOPE: Scope<()> = Scope { name: "global", directives: DIRECTIVES, blocks: BLOCKS };

const DIRECTIVES: &[Directive<()>] = &[
    Directive {
        name: "host-name",
        set: |b, _, l| {
            b.config.host_name = l.one()?.to_string();
            Ok(())
        },
    },
    Directive {
        name: "postmaster",
        set: |b, _, l| {
            b.config.postmaster = Some(l.one()?.to_string());
            Ok(())
        },
    },
    Directive {
        name: "domain-key",
        set: |b, _, l| {
            b.config.domain_keys.push(domain_key(l)?);
            Ok(())
        },
    },
    Directive { name: "arc-key", set: arc_key },
    Directive { name: "smtp-server-tls-certificate", set: tls_certificate },
    Directive { name: "smtp-listener", set: listener },
    Directive {
        // Outside any <virtual-mta>: the default virtual MTA's address and EHLO name (mail no
        // VMTA of the configuration carries leaves from it, not from the host's first address).
        name: "smtp-source-host",
        set: |b, _, l| {
            let mut v = VirtualMta::default();
            crate::directives::vmta::source_host(b, &mut v, l)?;
            b.config.global_source = v.source_ip.zip(v.host_name);
            Ok(())
        },
    },
    Directive {
        name: "pickup",
        set: |b, _, l| {
            let [dir, bad] = l.args else {
                return Err(l.err(
                    "`pickup` takes the pickup directory and the bad-mail directory",
                    "write `pickup /var/spool/sluice/pickup /var/spool/sluice/badmail`",
                ));
            };
            let remove_dot = b.config.pickup.as_ref().is_some_and(|p| p.remove_dot);
            b.config.pickup = Some(Pickup { dir: dir.into(), bad_dir: bad.into(), remove_dot });
            Ok(())
        },
    },
    Directive {
        name: "mx-connection-limit",
        set: |b, _, l| {
            let [pattern, n] = l.args else {
                return Err(l.err(
                    "`mx-connection-limit` takes an MX name pattern and a number",
                    "write `mx-connection-limit *.secureserver.net 20`",
                ));
            };
            let pattern = l.value(DomainPattern::parse(pattern))?;
            let n = l.value(n.parse::<u32>().map_err(|_| format!("`{n}` is not a number of connections")))?;
            b.config.mx_connection_limits.push((pattern, n));
            Ok(())
        },
    },
    Directive {
        name: "ip-connection-limit",
        set: |b, _, l| {
            let [cidr, n] = l.args else {
                return Err(l.err(
                    "`ip-connection-limit` takes a CIDR and a number",
                    "write `ip-connection-limit 173.194/16 50`",
                ));
            };
            let cidr = l.value(units::parse_cidr(cidr))?;
            let n = l.value(n.parse::<u32>().map_err(|_| format!("`{n}` is not a number of connections")))?;
            b.config.ip_connection_limits.push((cidr, n));
            Ok(())
        },
    },
    config_flag!("mailmerge-expands-undefined-variables", mailmerge_expands_undefined),
    Directive {
        name: "pickup-remove-dot",
        set: |b, _, l| {
            let on = l.bool()?;
            match b.config.pickup.as_mut() {
                Some(p) => p.remove_dot = on,
                None => b.pending_remove_dot = Some(on),
            }
            Ok(())
        },
    },
    Directive { name: "smtp-proxy-source-host", set: |b, _, l| global_proxy(b, l, vmta::proxy_source_host) },
    Directive { name: "use-proxy", set: |b, _, l| global_proxy(b, l, vmta::use_proxy) },
    Directive {
        // The port of the listener PowerMTA makes when no `smtp-listener` is given (beside
        // one, it changes nothing).
        name: "smtp-port",
        set: |b, _, l| {
            let port = l.value(l.one()?.parse::<u16>().map_err(|_| format!("`{}` is not a port", l.args.join(" "))))?;
            b.smtp_port = Some(port);
            Ok(())
        },
    },
    Directive { name: "http-mgmt-port", set: mgmt_port },
    Directive { name: "http-access", set: http_access },
    Directive { name: "http-api-key", set: api_key },
    Directive {
        name: "spool",
        set: |b, _, l| {
            let dir = PathBuf::from(l.one()?);
            b.spools.retain(|(p, _)| *p != dir);
            b.spools.push((dir, false));
            settle_spools(b);
            Ok(())
        },
    },
    config_flag!("spool-sync", spool_sync),
    Directive { name: "spool-segment-size", set: segment_size },
    Directive { name: "shards", set: shards },
    config_flag!("io-uring-sqpoll", io_uring_sqpoll),
    config_flag!("io-uring-multishot-receive", io_uring_multishot_receive),
    config_flag!("io-uring-registered-files", io_uring_registered_files),
    Directive {
        name: "io-backend",
        set: |b, _, l| {
            use crate::IoBackend::*;
            b.config.io_backend =
                l.choice(&[("auto", Auto), ("io_uring", IoUring), ("io-uring", IoUring), ("epoll", Epoll)])?;
            Ok(())
        },
    },
    Directive { name: "dns-server", set: dns_server },
    Directive {
        // PowerMTA's name for it; several lines are round-robined there, the first is asked here.
        name: "name-server",
        set: |b, u, l| match b.config.dns_server {
            None => dns_server(b, u, l),
            Some(first) => {
                b.warn(
                    l.span,
                    format!("another `name-server`: sluice asks the first one ({first}), PowerMTA takes turns"),
                );
                Ok(())
            }
        },
    },
    Directive {
        name: "total-max-smtp-in",
        set: |b, _, l| {
            b.config.total_max_smtp_in = l.count()?;
            Ok(())
        },
    },
    Directive {
        name: "log-file",
        set: |b, _, l| {
            b.config.log_file = Some(l.path(l.one()?));
            Ok(())
        },
    },
    Directive {
        name: "relay-domain",
        set: |b, _, l| {
            let pattern = l.value(crate::overrides::DomainPattern::parse(l.one()?))?;
            std::sync::Arc::make_mut(&mut b.config.relay_to).domains.push(pattern);
            Ok(())
        },
    },
    Directive {
        name: "relay-address",
        set: |b, _, l| {
            let address = l.one()?.trim_matches(['<', '>']).to_ascii_lowercase();
            if !address.contains('@') {
                return Err(l.err(format!("`{address}` is not an address"), "write relay-address user@domain"));
            }
            std::sync::Arc::make_mut(&mut b.config.relay_to).addresses.push(address);
            Ok(())
        },
    },
    Directive {
        name: "total-max-smtp-out",
        set: |b, _, l| {
            let n = l.value(units::parse_count_or_unlimited(l.one()?))?;
            if n == Some(0) {
                return Err(l.err("total-max-smtp-out 0 would never deliver", "use at least 1, or `unlimited`"));
            }
            b.config.total_max_smtp_out = n;
            Ok(())
        },
    },
    Directive {
        name: "startup-delivery-delay",
        set: |b, _, l| {
            b.config.startup_delivery_delay = l.duration()?;
            Ok(())
        },
    },
    Directive {
        name: "startup-ramp",
        set: |b, _, l| {
            b.config.startup_ramp = l.duration()?;
            Ok(())
        },
    },
    Directive { name: "source-ip-max-msg-rate", set: source_ip_limit },
    Directive { name: "source-ip-max-connect-rate", set: source_ip_limit },
    Directive { name: "source-ip-max-smtp-out", set: source_ip_limit },
    Directive {
        name: "smtp-command-timeout",
        set: |b, _, l| {
            b.config.smtp_command_timeout = l.duration()?;
            Ok(())
        },
    },
    Directive {
        name: "smtp-data-timeout",
        set: |b, _, l| {
            b.config.smtp_data_timeout = l.duration()?;
            Ok(())
        },
    },
];

const BLOCKS: &[Block<()>] = &[
    Block { name: "source", open: |b, _, r| source::block(b, r) },
    Block {
        name: "domain",
        open: |b, _, r| {
            let mut blocks = std::mem::take(&mut b.config.domains);
            let result = domain_block(b, r, &mut blocks);
            b.config.domains = blocks;
            result
        },
    },
    Block { name: "acct-file", open: |b, _, r| acct::block(b, r) },
    Block { name: "virtual-mta", open: |b, _, r| vmta::vmta_block(b, r) },
    Block { name: "virtual-mta-pool", open: |b, _, r| vmta::pool_block(b, r) },
    Block { name: "smtp-user", open: |b, _, r| source::smtp_user(b, r) },
    Block { name: "address-list", open: |b, _, r| lists::address_list(b, r).map(|_| ()) },
    Block {
        name: "feedback-loop-processor",
        open: |b, _, r| {
            let p = lists::report_processor(b, r)?;
            b.config.feedback_processor = Some(p);
            Ok(())
        },
    },
    Block {
        name: "bounce-processor",
        open: |b, _, r| {
            let p = lists::report_processor(b, r)?;
            b.config.bounce_processor = Some(p);
            Ok(())
        },
    },
    Block { name: "smtp-listener", open: listener_block },
    Block { name: "bounce-category-patterns", open: |b, _, r| lists::bounce_patterns(b, r) },
    Block { name: "smtp-pattern-list", open: |b, _, r| lists::smtp_pattern_list(b, r) },
    Block { name: "pattern-list", open: |b, _, r| lists::vmta_pattern_list(b, r) },
    Block { name: "cluster", open: |b, _, r| lists::cluster(b, r) },
    Block { name: "traffic-class", open: |b, _, r| lists::traffic_class(b, r) },
    Block {
        name: "mx-rollup-list",
        open: |b, _, r| {
            let mut list = std::mem::take(&mut b.config.mx_rollups);
            b.run(&lists::MX_ROLLUP_LIST, &mut list, r.children);
            b.config.mx_rollups = list;
            Ok(())
        },
    },
    Block { name: "rewrite-list", open: |b, _, r| lists::rewrite_list(b, r) },
    Block { name: "spool", open: spool_block },
    Block { name: "proxy", open: |b, _, r| vmta::proxy_block(b, r) },
    Block {
        name: "transmissions-api",
        open: |b, _, r| {
            let mut api = std::mem::take(&mut b.config.transmissions_api);
            b.run(&TRANSMISSIONS_API, &mut api, r.children);
            b.config.transmissions_api = api;
            Ok(())
        },
    },
    Block { name: "transmissions-api-listener", open: api_listener_block },
];

pub(crate) const TRANSMISSIONS_API: Scope<TransmissionsApi> = Scope {
    name: "transmissions-api",
    directives: &[Directive {
        // The Guide: 32 to 128 characters, each alphanumeric or `_`; case matters.
        name: "api-key",
        set: |_, t, l| {
            let key = l.one()?;
            let ok = (32..=128).contains(&key.len()) && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
            if !ok {
                return Err(l.err(
                    "an `api-key` is 32 to 128 characters, letters, digits or `_`",
                    "make one with `openssl rand -hex 20`",
                ));
            }
            t.keys.push(key.to_string());
            Ok(())
        },
    }],
    blocks: &[],
};

/// `<transmissions-api-listener ADDR>`: HTTPS for the Transmissions API (`tls-certificate`
/// required).
fn api_listener_block(b: &mut Builder, _: &mut (), r: &BlockRef) -> Result<(), ConfigError> {
    let addr = r.arg("127.0.0.1:8585")?;
    let addr = units::parse_listen(addr).map_err(|m| ConfigError::at(r.span, m, ""))?;
    let mut cert: Option<TlsCertificate> = None;
    b.run(&API_LISTENER, &mut cert, r.children);
    let Some(certificate) = cert else {
        return Err(ConfigError::at(
            r.span,
            "<transmissions-api-listener> needs a `tls-certificate` (the API is HTTPS)",
            "write `tls-certificate /etc/sluice/api.pem` (the certificate chain and its key in one PEM file)",
        ));
    };
    b.config.transmissions_api.listeners.push(ApiListener { addr, certificate });
    Ok(())
}

pub(crate) const API_LISTENER: Scope<Option<TlsCertificate>> = Scope {
    name: "transmissions-api-listener",
    directives: &[Directive {
        name: "tls-certificate",
        set: |_, c, l| {
            let file = PathBuf::from(l.one()?);
            *c = Some(TlsCertificate { cert: file.clone(), key: file, span: l.span.clone() });
            Ok(())
        },
    }],
    blocks: &[],
};

/// Global `smtp-proxy-source-host` / `use-proxy`: for every VMTA that sets no source of its
/// own, and for the default VMTA.
fn global_proxy(
    b: &mut Builder,
    l: &Line,
    set: fn(&mut Builder, &mut VirtualMta, &Line) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    let mut v = std::mem::take(&mut b.global_vmta);
    let result = set(b, &mut v, l);
    b.global_vmta = v;
    result
}

/// A `<domain PATTERN>` block into the blocks of its level (global, a VMTA, a pool).
pub(crate) fn domain_block(b: &mut Builder, r: &BlockRef, into: &mut DomainBlocks) -> Result<(), ConfigError> {
    let pattern = r.arg("example.com")?;
    let pattern = DomainPattern::parse(pattern)
        .map_err(|m| ConfigError::at(r.span, m, "write e.g. `<domain [*.]example.com>`"))?;
    let mut o = crate::overrides::DomainOverrides::default();
    b.run(&super::domain::SCOPE, &mut o, r.children);
    into.add(pattern, o);
    Ok(())
}

/// `domain-key SELECTOR,DOMAIN|*,KEYFILE` (spaces after the commas allowed); a relative
/// KEYFILE is found next to the config file that names it.
pub(crate) fn domain_key(l: &Line) -> Result<DomainKey, ConfigError> {
    let hint = "write `domain-key SELECTOR,DOMAIN,/path/to/key.pem` (DOMAIN may be *)";
    let parts = l.list();
    let [selector, domain, path] = parts.as_slice() else {
        return Err(l.err(format!("`{}` is not SELECTOR,DOMAIN,KEYFILE", l.text()), hint));
    };
    Ok(DomainKey {
        selector: selector.to_string(),
        domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        path: l.path(path),
        span: l.span.clone(),
    })
}

fn arc_key(b: &mut Builder, _: &mut (), l: &Line) -> Result<(), ConfigError> {
    let key = domain_key(l)?;
    if key.domain == "*" {
        return Err(l.err("an ARC key needs its domain", "write `arc-key s1,relay.example.com,/path/key.pem`"));
    }
    b.config.arc_key = Some(key);
    Ok(())
}

/// `smtp-server-tls-certificate FILE [PASSWORD]` (PowerMTA: one PEM holding the certificate
/// chain and its key) or `smtp-server-tls-certificate CERT KEY` (two PEM files).
fn tls_certificate(b: &mut Builder, _: &mut (), l: &Line) -> Result<(), ConfigError> {
    let (cert, key) = match l.args {
        [cert] => (cert, cert),
        [cert, second] if second.ends_with(".pem") || second.ends_with(".key") || second.contains('/') => (cert, second),
        [cert, _password] => {
            b.warn(l.span, "the certificate's password is not used: sluice reads unencrypted PEM keys (decrypt it with `openssl pkey`)");
            (cert, cert)
        }
        _ => {
            return Err(l.err(
                "`smtp-server-tls-certificate` takes a PEM file (certificate and key), or a certificate file and a key file",
                "write `smtp-server-tls-certificate /etc/sluice/mail.pem`",
            ))
        }
    };
    b.config.tls_certificate = Some(TlsCertificate { cert: l.path(cert), key: l.path(key), span: l.span.clone() });
    Ok(())
}

/// `smtp-listener CIDR:PORT [source=NAME] [tls=yes|no]` (`tls=yes`: TLS from the first byte,
/// as `<smtp-listener>`'s `immediate-tls yes`; later PowerMTA versions' syntax).
fn listener(b: &mut Builder, _: &mut (), l: &Line) -> Result<(), ConfigError> {
    let Some((addr, options)) = l.args.split_first() else {
        return Err(l.err("`smtp-listener` needs an address", "write `smtp-listener 127.0.0.1:2525`"));
    };
    let addr = l.value(units::parse_listen(addr))?;
    let mut source = None;
    let mut immediate_tls = false;
    for o in options {
        match o.split_once('=') {
            Some(("source", name)) if !name.is_empty() => {
                b.source_refs.push((name.to_string(), l.span.clone()));
                source = Some(name.to_string());
            }
            Some(("tls", v)) => {
                immediate_tls = l.value(units::parse_bool(v))?;
            }
            _ => {
                return Err(
                    l.err(format!("unknown listener option `{o}`"), "the options are `source=NAME` and `tls=yes|no`")
                )
            }
        }
    }
    b.config.listeners.push(Listener { addr, source, immediate_tls });
    Ok(())
}

/// `<smtp-listener ADDR> immediate-tls yes </smtp-listener>`.
fn listener_block(b: &mut Builder, _: &mut (), r: &BlockRef) -> Result<(), ConfigError> {
    let addr = r.arg("0/0:465")?;
    let addr = units::parse_listen(addr).map_err(|m| ConfigError::at(r.span, m, ""))?;
    let mut listener = Listener { addr, source: None, immediate_tls: false };
    b.run(&LISTENER, &mut listener, r.children);
    b.config.listeners.push(listener);
    Ok(())
}

pub(crate) const LISTENER: Scope<Listener> = Scope {
    name: "smtp-listener",
    directives: &[
        Directive {
            name: "immediate-tls",
            set: |_, t, l| {
                t.immediate_tls = l.bool()?;
                Ok(())
            },
        },
        Directive {
            name: "source",
            set: |b, t, l| {
                let name = l.one()?.to_string();
                b.source_refs.push((name.clone(), l.span.clone()));
                t.source = Some(name);
                Ok(())
            },
        },
    ],
    blocks: &[],
};

/// `<spool DIR>`: the spool sluice writes to, or (`deliver-only yes`, with another spool
/// to write to) one to drain. Several writable spools: the last one is used.
fn spool_block(b: &mut Builder, _: &mut (), r: &BlockRef) -> Result<(), ConfigError> {
    let dir = PathBuf::from(r.arg("/var/spool/sluice")?);
    let mut spool = SpoolBlock::default();
    b.run(&SPOOL, &mut spool, r.children);
    b.spools.retain(|(p, _)| *p != dir); // the same directory again: the later block says
    b.spools.push((dir, spool.deliver_only));
    settle_spools(b);
    Ok(())
}

/// The spool written to and the ones drained, from every `spool` / `<spool>` so far.
fn settle_spools(b: &mut Builder) {
    let writable: Vec<&PathBuf> = b.spools.iter().filter(|(_, d)| !d).map(|(p, _)| p).collect();
    match writable.last() {
        Some(w) => {
            b.config.spool_dir = (*w).clone();
            b.config.spool_deliver_only = false;
            b.config.drain_spools = b.spools.iter().filter(|(_, d)| *d).map(|(p, _)| p.clone()).collect();
        }
        None => {
            // Only deliver-only spools: the first is delivered from, nothing new comes in.
            b.config.spool_dir = b.spools[0].0.clone();
            b.config.spool_deliver_only = true;
            b.config.drain_spools = b.spools[1..].iter().map(|(p, _)| p.clone()).collect();
        }
    }
}

#[derive(Default)]
pub(crate) struct SpoolBlock {
    deliver_only: bool,
}

pub(crate) const SPOOL: Scope<SpoolBlock> = Scope {
    name: "spool",
    directives: &[Directive {
        name: "deliver-only",
        set: |_, s, l| {
            s.deliver_only = l.bool()?;
            Ok(())
        },
    }],
    blocks: &[],
};

fn mgmt_port(b: &mut Builder, _: &mut (), l: &Line) -> Result<(), ConfigError> {
    let v = l.one()?;
    let listen = match v.parse::<u16>() {
        Ok(port) => SocketAddr::from(([0, 0, 0, 0], port)),
        Err(_) => v
            .parse::<SocketAddr>()
            .map_err(|_| l.err(format!("`{v}` is not a port or IP:PORT"), "write e.g. 8080 or 127.0.0.1:8080"))?,
    };
    b.config.mgmt.get_or_insert_with(|| Mgmt { listen, access: Vec::new(), api_key: None }).listen = listen;
    Ok(())
}

fn http_access(b: &mut Builder, _: &mut (), l: &Line) -> Result<(), ConfigError> {
    let [cidr, level] = l.args else {
        return Err(l.err(
            "`http-access` takes an address (or CIDR) and a level",
            "write e.g. `http-access 10.0.0.0/8 monitor` (levels: none, monitor, operator, admin)",
        ));
    };
    let cidr: Cidr = l.value(units::parse_cidr(cidr))?;
    let level = match level.to_ascii_lowercase().as_str() {
        "none" => Access::None,
        "monitor" => Access::Monitor,
        "operator" => Access::Operator,
        "admin" => Access::Admin,
        other => {
            return Err(
                l.err(format!("unknown access level `{other}`"), "the levels are none, monitor, operator and admin")
            )
        }
    };
    b.mgmt_access.push((cidr, level));
    Ok(())
}

fn api_key(b: &mut Builder, _: &mut (), l: &Line) -> Result<(), ConfigError> {
    let key = l.one()?;
    if key.len() < 16 {
        return Err(l.err(
            "`http-api-key` is too short",
            "use at least 16 random characters, e.g. from `openssl rand -hex 24`",
        ));
    }
    b.mgmt_key = Some(key.to_string());
    Ok(())
}

fn segment_size(b: &mut Builder, _: &mut (), l: &Line) -> Result<(), ConfigError> {
    let size = l.size()?;
    if !(1 << 20..=1 << 32).contains(&size) {
        return Err(l.err("spool-segment-size must be between 1M and 4G", "the default 64M suits most hosts"));
    }
    b.config.spool_segment_bytes = size;
    Ok(())
}

fn shards(b: &mut Builder, _: &mut (), l: &Line) -> Result<(), ConfigError> {
    let n = l.count()?;
    if !(1..=1024).contains(&n) {
        return Err(l.err("shards must be between 1 and 1024", "leave it out for one shard per CPU"));
    }
    b.config.shards = Some(n as usize);
    Ok(())
}

fn dns_server(b: &mut Builder, _: &mut (), l: &Line) -> Result<(), ConfigError> {
    let v = l.one()?;
    let addr = v
        .parse::<SocketAddr>()
        .or_else(|_| v.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| l.err(format!("`{v}` is not IP or IP:PORT"), "write e.g. 127.0.0.1:5353"))?;
    b.config.dns_server = Some(addr);
    Ok(())
}

/// `source-ip-max-msg-rate IP RATE`, `source-ip-max-connect-rate IP RATE`,
/// `source-ip-max-smtp-out IP N`: limits of one local address, across every queue.
fn source_ip_limit(b: &mut Builder, _: &mut (), l: &Line) -> Result<(), ConfigError> {
    let [ip, limit] = l.args else {
        return Err(l.err(
            format!("`{}` takes an IP address and a limit", l.name),
            format!("write `{} 192.0.2.10 600/m`", l.name),
        ));
    };
    let ip: IpAddr = ip.parse().map_err(|_| l.err(format!("`{ip}` is not an IP address"), "write e.g. 192.0.2.10"))?;
    let entry = b.config.source_ip_limits.entry(ip).or_default();
    match l.name {
        "source-ip-max-msg-rate" => entry.max_msg_rate = Some(l.value(units::parse_rate(limit))?),
        "source-ip-max-connect-rate" => entry.max_connect_rate = Some(l.value(units::parse_rate(limit))?),
        _ => {
            entry.max_smtp_out = Some(limit.parse().map_err(|_| l.err(format!("`{limit}` is not a whole number"), ""))?)
        }
    }
    Ok(())
}
