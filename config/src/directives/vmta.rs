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
        Directive { name: "smtp-proxy-source-host", set: proxy_source_host },
        Directive { name: "use-proxy", set: use_proxy },
        Directive {
            name: "proxy-protocol",
            set: |_, v, l| {
                v.proxy_version = Some(proxy_version(l)?);
                Ok(())
            },
        },
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
            name: "traffic-class",
            set: |b, v, l| {
                let name = l.one()?.to_string();
                b.class_refs.push((name.clone(), l.span.clone()));
                v.traffic_class = Some(name);
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

/// `smtp-proxy-source-host LOCAL SERVER:PORT CLIENT[:PORT] HOSTNAME`: send through a proxy
/// host (see [`Proxy`]). LOCAL is an address to bind (a range: its first), or a CIDR of this
/// host's addresses: then the kernel picks the one that routes to the proxy.
pub(crate) fn proxy_source_host(_: &mut Builder, v: &mut VirtualMta, l: &Line) -> Result<(), ConfigError> {
    let [local, server, client, host] = l.args else {
        return Err(l.err(
            "`smtp-proxy-source-host` takes a local address (or CIDR), the proxy's HOST:PORT, the address the proxy sends from, and a host name",
            "write `smtp-proxy-source-host 10.0.0.5 10.0.0.9:5000 203.0.113.7 mta1.example.com`",
        ));
    };
    let local = match local.contains('-') {
        true => l.value(units::parse_ip_set(local, SOURCE_ADDRESSES_MAX))?.first().copied(),
        false => {
            let cidr = l.value(units::parse_cidr(local))?;
            let whole = if cidr.addr.is_ipv4() { 32 } else { 128 };
            (cidr.prefix == whole).then_some(cidr.addr)
        }
    };
    let (server, port) = l.value(proxy_server(server))?;
    let client = l.value(proxy_client(client))?;
    let server_addr = server.parse().ok().map(|ip| std::net::SocketAddr::new(ip, port));
    let name = format!("{server}:{port}");
    v.proxies.push(Proxy { name, server, port, server_addr, local, client, host_name: host.clone(), version: 1 });
    Ok(())
}

/// `use-proxy NAME[,NAME...]`: the `<proxy>` blocks to send through, the next one only when
/// connecting to the one before failed.
pub(crate) fn use_proxy(_: &mut Builder, v: &mut VirtualMta, l: &Line) -> Result<(), ConfigError> {
    let names: Vec<String> =
        l.args.iter().flat_map(|a| a.split(',')).map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
    if names.is_empty() {
        return Err(l.err("`use-proxy` takes the names of <proxy> blocks", "write `use-proxy proxy-a,proxy-b`"));
    }
    v.use_proxy = Some((names, l.span.clone()));
    Ok(())
}

/// `proxy-protocol N` / `protocol-version N`: 1 or 2.
pub(crate) fn proxy_version(l: &Line) -> Result<u8, ConfigError> {
    match l.one()? {
        "1" => Ok(1),
        "2" => Ok(2),
        other => Err(l.err(format!("`{other}` is not a PROXY protocol version"), "write 1 (text) or 2 (binary)")),
    }
}

/// The proxy host: `HOST:PORT` or `[IPv6]:PORT`, the port required.
pub(crate) fn proxy_server(v: &str) -> Result<(String, u16), String> {
    let bad = || format!("`{v}` is not a proxy server; write HOST:PORT, e.g. 10.0.0.9:5000");
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || (host.contains(':') && host.parse::<std::net::IpAddr>().is_err()) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The address the proxy sends from: `IP`, `IP:PORT`, `[IPv6]:PORT` (port 0 when none).
pub(crate) fn proxy_client(v: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(ip) = v.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 0));
    }
    v.parse().map_err(|_| format!("`{v}` is not an address for the proxy to send from; write IP or IP:PORT"))
}

/// `<proxy NAME>`: `server HOST:PORT`, `client IP[:PORT] HOSTNAME`, `protocol-version N`.
pub(crate) fn proxy_block(b: &mut Builder, r: &BlockRef) -> Result<(), ConfigError> {
    let name = r.arg("proxy-a")?.to_string();
    let mut p = ProxyDraft::default();
    b.run(&PROXY, &mut p, r.children);
    let (Some((server, port)), Some((client, host_name))) = (p.server, p.client) else {
        return Err(ConfigError::at(
            r.span,
            format!("<proxy {name}> needs a `server` and a `client`"),
            "write `server 10.0.0.9:5000` and `client 203.0.113.7 mta1.example.com` in it",
        ));
    };
    let server_addr = server.parse().ok().map(|ip| std::net::SocketAddr::new(ip, port));
    let proxy =
        Proxy { name: name.clone(), server, port, server_addr, local: None, client, host_name, version: p.version };
    if b.proxies.insert(name.clone(), proxy).is_some() {
        return Err(ConfigError::at(
            r.span,
            format!("<proxy {name}> is defined twice"),
            "give each proxy its own name",
        ));
    }
    Ok(())
}

/// What a `<proxy>` holds while it is read.
pub(crate) struct ProxyDraft {
    server: Option<(String, u16)>,
    client: Option<(std::net::SocketAddr, String)>,
    version: u8,
}

impl Default for ProxyDraft {
    fn default() -> Self {
        ProxyDraft { server: None, client: None, version: 1 }
    }
}

pub(crate) const PROXY: Scope<ProxyDraft> = Scope {
    name: "proxy",
    directives: &[
        Directive {
            name: "server",
            set: |_, p, l| {
                p.server = Some(l.value(proxy_server(l.one()?))?);
                Ok(())
            },
        },
        Directive {
            name: "client",
            set: |_, p, l| {
                let [client, host] = l.args else {
                    return Err(l.err(
                        "`client` takes the address the proxy sends from and a host name",
                        "write `client 203.0.113.7 mta1.example.com`",
                    ));
                };
                p.client = Some((l.value(proxy_client(client))?, host.clone()));
                Ok(())
            },
        },
        Directive {
            name: "protocol-version",
            set: |_, p, l| {
                p.version = proxy_version(l)?;
                Ok(())
            },
        },
    ],
    blocks: &[],
};

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
