//! sluice-config: PowerMTA-style configuration → typed, validated [`Config`].
//! Errors carry file:line and a hint; the only file access is the include loader the caller
//! passes in.
//!
//! Layout: `ast` (the grammar), `units` (value forms), `known` (PowerMTA's directive list),
//! `directives` (one table per kind of block: name → parser), `build` (runs the tables,
//! records every problem), `overrides` (how blocks merge), `model` (the typed result).

pub mod acct;
pub mod ast;
mod build;
pub mod directives;
#[doc(hidden)]
pub mod fuzz_check;
pub mod known;
mod model;
pub mod names;
mod overrides;
pub mod units;

use ast::Span;
use overrides::{DomainBlocks, SourceOverrides};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use acct::{AcctField, AcctFile, AcctSink, RecordType};
pub use model::*;
pub use units::{Cidr, HostPort, Rate};

/// The configuration used when `sluice run` gets no `-c`: listen on loopback, spool in
/// ./spool, relay for 127.0.0.1, deliver by MX.
pub const DEFAULT_CONFIG: &str = include_str!("default.conf");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: u32,
    pub message: String,
    pub hint: String,
}

impl ConfigError {
    pub fn at(span: &Span, message: impl Into<String>, hint: impl Into<String>) -> Self {
        ConfigError { file: span.file.to_string(), line: span.line, message: message.into(), hint: hint.into() }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)?;
        if !self.hint.is_empty() {
            write!(f, " (hint: {})", self.hint)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// How the shards do their IO (`io-backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring where the kernel allows it, else epoll (said once at start).
    Auto,
    /// io_uring or nothing: start-up fails where it is refused.
    IoUring,
    /// epoll readiness and plain system calls: what a default container profile allows.
    Epoll,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host_name: String,
    /// Global `smtp-source-host IP NAME`: the source of mail sent through the default virtual
    /// MTA (any VMTA name the configuration does not define).
    pub global_source: Option<(IpAddr, String)>,
    /// `mx-connection-limit PATTERN N` and `ip-connection-limit CIDR N`, in order.
    pub(crate) mx_connection_limits: Vec<(overrides::DomainPattern, u32)>,
    pub(crate) ip_connection_limits: Vec<(Cidr, u32)>,
    /// `mailmerge-expands-undefined-variables` (yes): a `[name]` no variable defines becomes
    /// empty; no: it stays as written.
    pub mailmerge_expands_undefined: bool,
    /// `<transmissions-api>` and `<transmissions-api-listener>`.
    pub transmissions_api: TransmissionsApi,
    /// `pickup DIR BAD-DIR`: message files dropped in DIR are injected (bad ones moved to
    /// BAD-DIR); `pickup-remove-dot`.
    pub pickup: Option<Pickup>,
    /// Global `smtp-proxy-source-host` / `use-proxy`: the default VMTA sends through these
    /// (every VMTA with no source of its own has them too).
    pub global_proxies: Vec<Proxy>,
    pub postmaster: Option<String>,
    /// `smtp-listener` lines and `<smtp-listener>` blocks (none: PowerMTA's 0.0.0.0:25).
    pub listeners: Vec<Listener>,
    /// `smtp-server-tls-certificate CERT KEY`: PEM files for inbound TLS.
    pub tls_certificate: Option<TlsCertificate>,
    pub spool_dir: PathBuf,
    /// `deliver-only yes` on the spool sluice writes to (every `<spool>` is deliver-only):
    /// what is in it is delivered, new mail is refused.
    pub spool_deliver_only: bool,
    /// Other `<spool DIR>` blocks with `deliver-only yes`: spools attached from another
    /// sluice host, whose mail is moved into this spool at start-up and delivered.
    pub drain_spools: Vec<PathBuf>,
    /// `spool-sync no` drops the fsync before 250; for benchmarks only.
    pub spool_sync: bool,
    pub spool_segment_bytes: u64,
    pub shards: Option<usize>,
    /// `io-backend`: how the shards do their IO.
    pub io_backend: IoBackend,
    /// `io-uring-sqpoll yes`: each shard's ring gets a kernel thread that polls its
    /// submission queue (no `io_uring_enter` to submit; a core's worth of CPU while busy).
    pub io_uring_sqpoll: bool,
    /// `io-uring-multishot-receive yes`: each socket reads through one multishot receive
    /// and the shard's ring of provided buffers (no submission a read; a copy a byte).
    pub io_uring_multishot_receive: bool,
    /// `io-uring-registered-files yes`: sockets go in each ring's file table, and their
    /// operations name the slot (no file reference per operation; a system call a socket).
    pub io_uring_registered_files: bool,
    pub dns_server: Option<SocketAddr>,
    pub total_max_smtp_in: u32,
    /// `<mx-rollup-list>`.
    pub mx_rollups: MxRollupList,
    /// `<cluster>`, when this host is one of a fleet.
    pub cluster: Option<Cluster>,
    /// `<traffic-class>` blocks, in the order written.
    pub traffic_classes: Vec<TrafficClass>,
    /// `log-file PATH`: the log is also written there.
    pub log_file: Option<PathBuf>,
    /// `relay-domain` / `relay-address`: recipients accepted from any client.
    pub relay_to: std::sync::Arc<RelayTargets>,
    /// `total-max-smtp-out`: outbound connections open at once, all queues and shards
    /// together (None: unlimited).
    pub total_max_smtp_out: Option<u32>,
    /// Limits per source IP, shared by every shard and every VMTA using that address.
    pub source_ip_limits: HashMap<IpAddr, SourceIpLimits>,
    pub smtp_command_timeout: Duration,
    pub smtp_data_timeout: Duration,
    /// `startup-delivery-delay`: after start, mail is accepted but not delivered for this long.
    pub startup_delivery_delay: Duration,
    /// `startup-ramp`: after the delay, connection and rate limits grow from
    /// `STARTUP_RAMP_FLOOR` of their value to all of it over this long.
    pub startup_ramp: Duration,
    /// `<source CIDR>` rules, each already merged with the wider rules containing it.
    sources: Vec<SourceRule>,
    /// `<source NAME>` / `<source {NAME}>` blocks: applied on top when named.
    named_sources: names::Names<SourceOverrides>,
    /// `<smtp-user NAME>` blocks.
    pub smtp_users: HashMap<String, SmtpUser>,
    /// `<address-list NAME>` blocks (suppression lists).
    pub address_lists: names::Names<AddressListConfig>,
    pub feedback_processor: Option<FeedbackProcessor>,
    /// `<bounce-processor>` (same shape; its `auto-suppress-list` takes hard-bounced recipients).
    pub bounce_processor: Option<FeedbackProcessor>,
    domains: DomainBlocks,
    /// `<domain>` blocks inside `<virtual-mta-pool>` blocks.
    pool_domains: HashMap<String, DomainBlocks>,
    /// `domain-key` lines: global, and per pool (per VMTA: in `VirtualMta`).
    pub domain_keys: Vec<DomainKey>,
    /// `arc-key SELECTOR,DOMAIN,KEYFILE`: the key ARC seals are made with.
    pub arc_key: Option<DomainKey>,
    pub pool_domain_keys: HashMap<String, Vec<DomainKey>>,
    pub vmtas: names::Names<VirtualMta>,
    /// `<smtp-pattern-list NAME>` blocks.
    pub pattern_lists: names::Names<std::sync::Arc<Vec<PatternRule>>>,
    /// `<pattern-list NAME>`: VMTA selection rules.
    pub vmta_pattern_lists: names::Names<std::sync::Arc<VmtaPatternList>>,
    /// `<rewrite-list NAME>`.
    pub rewrite_lists: names::Names<std::sync::Arc<RewriteList>>,
    /// `rewrite-list NAME` in a `<virtual-mta-pool>`.
    pub pool_rewrite_lists: HashMap<String, String>,
    /// `<bounce-category-patterns>`, tried in order before the built-in rules.
    pub bounce_patterns: std::sync::Arc<Vec<BouncePattern>>,
    /// `<virtual-mta-pool NAME>` → members, used round-robin per connection.
    pub pools: names::Names<Vec<String>>,
    pub acct_files: Vec<AcctFile>,
    /// The management API, when `http-mgmt-port` is set.
    pub mgmt: Option<Mgmt>,
    /// Header fields some accounting file records (`header_NAME` in `record-fields`), each
    /// once, in the order first named: what every record carries in `Record::headers`.
    pub acct_headers: Vec<String>,
    pub warnings: Vec<Warning>,
}

impl Config {
    /// Whether some `<acct-file>` records this type: a shard builds no `r` rows nobody writes
    /// (the management counters read only delivery and feedback rows).
    pub fn acct_records(&self, kind: RecordType) -> bool {
        self.acct_files.iter().any(|f| f.records.contains(&kind))
    }

    /// The start-up phase `elapsed_ms` after start.
    pub fn startup(&self, elapsed_ms: u64) -> Startup {
        let delay = self.startup_delivery_delay.as_millis() as u64;
        let ramp = self.startup_ramp.as_millis() as u64;
        if elapsed_ms < delay {
            return Startup::Delaying { left_ms: delay - elapsed_ms };
        }
        let into = elapsed_ms - delay;
        if into < ramp {
            let share = STARTUP_RAMP_FLOOR + (1.0 - STARTUP_RAMP_FLOOR) * into as f64 / ramp as f64;
            return Startup::Ramping { share };
        }
        Startup::Running
    }

    /// A named `<source NAME>` on its own (over the defaults), when defined.
    pub fn named_source(&self, name: &str) -> Option<SourcePolicy> {
        let o = self.named_sources.get(name)?;
        let mut p = SourcePolicy::default();
        o.apply(&mut p);
        Some(p)
    }

    /// The `<source CIDR>` rules, as written (each merged with the wider ones).
    pub fn source_rules(&self) -> &[SourceRule] {
        &self.sources
    }

    /// What an authenticated `<smtp-user>` whose `source` is `source` may do: relay whatever
    /// its address (User's Guide 3.3.8), unless `{auth}` or its named source says otherwise;
    /// a named source overrides only what it sets (3.3.7).
    pub fn user_policy(&self, source: &str) -> SourcePolicy {
        let mut p = SourcePolicy { always_allow_relaying: true, ..SourcePolicy::default() };
        self.apply_named(&mut p, &["{auth}", source]);
        p
    }

    /// Named sources applied on top of `p`, in order (the undefined ones are skipped).
    fn apply_named(&self, p: &mut SourcePolicy, named: &[&str]) {
        for o in named.iter().filter_map(|n| self.named_sources.get(n)) {
            o.apply(p);
        }
    }

    /// The policy of a session from `ip` with named sources applied on top, in order (a
    /// listener's `source=NAME`, `{auth}` and an SMTP user's `source NAME`).
    pub fn policy_for(&self, ip: IpAddr, named: &[&str]) -> std::borrow::Cow<'_, SourcePolicy> {
        let base = self.source_policy(ip);
        if !named.iter().any(|n| self.named_sources.contains_key(n)) {
            return std::borrow::Cow::Borrowed(base);
        }
        let mut p = base.clone();
        self.apply_named(&mut p, named);
        std::borrow::Cow::Owned(p)
    }

    /// The policy for a client address: the most specific `<source>` rule containing it
    /// (merged with the wider ones); none → defaults.
    pub fn source_policy(&self, ip: IpAddr) -> &SourcePolicy {
        static DEFAULT: std::sync::OnceLock<SourcePolicy> = std::sync::OnceLock::new();
        self.sources
            .iter()
            .filter(|r| r.cidr.contains(ip))
            .max_by_key(|r| r.cidr.prefix)
            .map(|r| &r.policy)
            .unwrap_or_else(|| DEFAULT.get_or_init(SourcePolicy::default))
    }

    /// Settings for a destination domain: `*`, then each parent from the farthest, then exact.
    pub fn domain_settings(&self, domain: &str) -> DomainSettings {
        let mut settings = DomainSettings::default();
        self.domains.apply(domain, &mut settings);
        settings
    }

    /// As `domain_settings`, then the `<domain>` blocks inside the VMTA override the global
    /// ones. For a pool: its first member's, then the pool's own.
    pub fn queue_settings(&self, domain: &str, vmta: &str) -> DomainSettings {
        let mut settings = self.domain_settings(domain);
        let member = self.pools.get(vmta).and_then(|m| m.first()).map(String::as_str).unwrap_or(vmta);
        if let Some(v) = self.vmtas.get(member) {
            v.domains.apply(domain, &mut settings);
        }
        if let Some(blocks) = self.pool_domains.get(vmta) {
            blocks.apply(domain, &mut settings);
        }
        settings
    }

    /// What must be equal for two domains with the same MX hosts to share a queue (MX
    /// rollup): their settings for every VMTA and pool. None when the domain opts out
    /// (`disable-mx-rollup yes`).
    pub fn rollup_fingerprint(&self, domain: &str) -> Option<String> {
        let global = self.domain_settings(domain);
        if !global.mx_rollup {
            return None;
        }
        let mut names: Vec<&String> = self.vmtas.keys().chain(self.pools.keys()).collect();
        names.sort();
        let mut fingerprint = format!("{global:?}");
        for name in names {
            let settings = self.queue_settings(domain, name);
            if !settings.mx_rollup {
                return None;
            }
            if settings != global {
                fingerprint.push_str(&format!("|{name}:{settings:?}"));
            }
        }
        Some(fingerprint)
    }

    /// The domain whose queue a destination's mail joins: itself, or its `queue-to` target.
    pub fn queue_domain(&self, domain: &str) -> String {
        // Only `queue-to` matters here, and this runs per message: no full settings.
        self.domains.queue_to(domain).cloned().unwrap_or_else(|| domain.to_string())
    }

    /// A VMTA or pool name as it was defined, for a name written in any case (as written when
    /// it names neither).
    /// The traffic class of mail through VMTA (or pool) `name`: the VMTA's `traffic-class`
    /// (a pool's: its first member's).
    pub fn vmta_class(&self, name: &str) -> Option<&str> {
        let vmta = match self.pools.get(name) {
            Some(members) => self.vmtas.get(members.first()?)?,
            None => self.vmtas.get(name)?,
        };
        vmta.traffic_class.as_deref()
    }

    /// Which shards run what (`<traffic-class>`) on a host of `shards` shards.
    pub fn shard_sets(&self, shards: u32) -> Result<ShardSets, String> {
        ShardSets::new(&self.traffic_classes, shards)
    }

    pub fn defined_vmta(&self, name: &str) -> String {
        self.vmtas.defined(name).or_else(|| self.pools.defined(name)).unwrap_or(name).to_string()
    }

    /// Whether any `mx-connection-limit` or `ip-connection-limit` is set.
    pub fn has_hop_limits(&self) -> bool {
        !self.mx_connection_limits.is_empty() || !self.ip_connection_limits.is_empty()
    }

    /// The connection limits a next hop falls under: its MX name's (the first
    /// `mx-connection-limit` whose pattern matches it) and its address's (the most specific
    /// `ip-connection-limit` holding it), each as (what is counted, the most open at once).
    /// PowerMTA counts them per source IP; each MX name and each address on its own.
    pub fn hop_limits(&self, host: &str, ip: IpAddr) -> Vec<(String, u32)> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut out = Vec::new();
        if let Some((_, n)) = self.mx_connection_limits.iter().find(|(p, _)| p.matches(&host)) {
            out.push((format!("mx:{host}"), *n));
        }
        if let Some((_, n)) =
            self.ip_connection_limits.iter().filter(|(c, _)| c.contains(ip)).max_by_key(|(c, _)| c.prefix)
        {
            out.push((format!("ip:{ip}"), *n));
        }
        out
    }

    /// The proxies a VMTA sends through (the default VMTA: the global ones).
    pub fn proxies_of(&self, vmta: &str) -> &[Proxy] {
        match self.vmtas.get(vmta) {
            Some(v) => &v.proxies,
            None => &self.global_proxies,
        }
    }

    /// Every proxy whose server is a name, for the lookup at start.
    pub fn proxies_mut(&mut self) -> impl Iterator<Item = &mut Proxy> {
        self.global_proxies.iter_mut().chain(self.vmtas.values_mut().flat_map(|v| v.proxies.iter_mut()))
    }

    /// Resolves a VMTA or pool name.
    pub fn vmta_target(&self, name: &str) -> Option<VmtaTarget> {
        // The name as defined, whatever the case it is written in.
        if let Some(defined) = self.vmtas.defined(name) {
            Some(VmtaTarget::Vmta(defined.to_string()))
        } else {
            self.pools.defined(name).map(|defined| VmtaTarget::Pool(defined.to_string()))
        }
    }
}

/// Everything a configuration check found: the configuration when there were no errors,
/// every error, every warning (each with its file:line).
pub struct Checked {
    pub config: Option<Config>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<Warning>,
}

/// Parses and validates a whole configuration; the first error, if any.
pub fn load(file: &str, text: &str, include: &mut ast::IncludeLoader) -> Result<Config, ConfigError> {
    let checked = check(file, text, include);
    match checked.errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(checked.config.expect("no errors: a configuration")),
    }
}

/// Parses and validates a whole configuration, reporting every problem.
pub fn check(file: &str, text: &str, include: &mut ast::IncludeLoader) -> Checked {
    let parsed = ast::parse(file, text, include);
    let mut b = build::Builder::new(Config::empty());
    b.errors = parsed.errors;
    b.run(&directives::global::SCOPE, &mut (), &parsed.nodes);
    b.finish(file);
    // A `<domain $macro>` block is read once per domain; each warning is reported once.
    let mut seen = std::collections::HashSet::new();
    let mut warnings = std::mem::take(&mut b.config.warnings);
    warnings.retain(|w| seen.insert((w.span.to_string(), w.message.clone())));
    let mut errors = b.errors;
    let mut seen = std::collections::HashSet::new();
    errors.retain(|e| seen.insert(e.to_string()));
    errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    let mut config = b.config;
    config.warnings = warnings.clone();
    Checked { config: errors.is_empty().then_some(config), errors, warnings }
}

impl Config {
    pub(crate) fn set_sources(&mut self, rules: Vec<SourceRule>, named: names::Names<SourceOverrides>) {
        self.sources = rules;
        self.named_sources = named;
    }

    pub(crate) fn has_named_source(&self, name: &str) -> bool {
        self.named_sources.contains_key(name)
    }

    fn empty() -> Config {
        Config {
            host_name: "localhost".into(),
            postmaster: None,
            listeners: Vec::new(),
            tls_certificate: None,
            spool_dir: PathBuf::from("spool"),
            spool_deliver_only: false,
            drain_spools: Vec::new(),
            spool_sync: true,
            spool_segment_bytes: 64 << 20,
            shards: None,
            io_backend: IoBackend::Auto,
            io_uring_sqpoll: false,
            io_uring_multishot_receive: false,
            io_uring_registered_files: false,
            dns_server: None,
            total_max_smtp_in: 10_000,
            total_max_smtp_out: None,
            relay_to: Default::default(),
            log_file: None,
            mx_rollups: Default::default(),
            cluster: None,
            traffic_classes: Vec::new(),
            source_ip_limits: HashMap::new(),
            smtp_command_timeout: Duration::from_secs(300),
            smtp_data_timeout: Duration::from_secs(600),
            startup_delivery_delay: Duration::ZERO,
            startup_ramp: Duration::ZERO,
            sources: Vec::new(),
            named_sources: names::Names::new(),
            global_source: None,
            global_proxies: Vec::new(),
            pickup: None,
            transmissions_api: TransmissionsApi::default(),
            mailmerge_expands_undefined: true,
            mx_connection_limits: Vec::new(),
            ip_connection_limits: Vec::new(),
            smtp_users: HashMap::new(),
            address_lists: names::Names::new(),
            feedback_processor: None,
            bounce_processor: None,
            domains: DomainBlocks::default(),
            pool_domains: HashMap::new(),
            domain_keys: Vec::new(),
            arc_key: None,
            pool_domain_keys: HashMap::new(),
            acct_files: Vec::new(),
            mgmt: None,
            acct_headers: Vec::new(),
            vmtas: names::Names::new(),
            pattern_lists: names::Names::new(),
            vmta_pattern_lists: names::Names::new(),
            rewrite_lists: names::Names::new(),
            pool_rewrite_lists: HashMap::new(),
            bounce_patterns: std::sync::Arc::new(Vec::new()),
            pools: names::Names::new(),
            warnings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        load("t.conf", text, &mut |_| Err("no includes".into()))
    }

    /// `spool-takeover` and `takeover-after` in `<cluster>`: the fleet's spool root and the
    /// lease; a `spool` elsewhere than `ROOT/<node-name>` (before or after the block) is
    /// warned about at the directive's line; a lease under a second is an error.
    #[test]
    fn spool_takeover_settings() {
        let c = parse(
            "smtp-listener 127.0.0.1:25\nspool /shared/spools/mta-2\n<cluster>\n redis-server 10.0.0.5:6379\n node-name mta-2\n \
             spool-takeover /shared/spools\n takeover-after 12s\n</cluster>\n",
        )
        .unwrap();
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(cl.spool_takeover.as_deref(), Some(std::path::Path::new("/shared/spools")));
        assert_eq!(cl.takeover_after, std::time::Duration::from_secs(12));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = parse("<cluster>\n redis-server r:6379\n node-name mta-2\n</cluster>\n").unwrap();
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!((cl.spool_takeover.as_ref(), cl.takeover_after), (None, std::time::Duration::from_secs(10)));
        let c = parse(
            "smtp-listener 127.0.0.1:25\n<cluster>\n redis-server r:6379\n node-name mta-2\n \
             spool-takeover /shared/spools\n</cluster>\nspool /var/spool/other\n",
        )
        .unwrap();
        let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
        assert!(w.len() == 1 && w[0].contains(":5") && w[0].contains("/shared/spools/mta-2"), "{w:?}");
        let e = parse("<cluster>\n redis-server r:6379\n takeover-after 500ms\n</cluster>\n").unwrap_err();
        assert_eq!(e.line, 3, "{e:?}");
    }

    /// Older names and source settings that change what is accepted or returned.
    #[test]
    fn per_hour_rates_hops_and_dsn_return() {
        let c = parse(
            "smtp-listener 127.0.0.1:25\n<domain a.test>\n max-msg-per-hour 3600\n backoff-max-msg-per-hour 60\n</domain>\n\
             <source 10.0.0.0/8>\n max-message-hops 30\n dsn-return-default full\n</source>\n",
        )
        .unwrap();
        let q = c.queue_settings("a.test", "default");
        assert_eq!(q.max_msg_rate, units::parse_rate_limit("3600/h").unwrap());
        assert_eq!(q.backoff_max_msg_rate, units::parse_rate_limit("60/h").unwrap());
        let p = c.source_policy("10.1.2.3".parse().unwrap());
        assert_eq!((p.max_message_hops, p.dsn_return_default), (30, Some(DsnReturn::Full)));
        let p = c.source_policy("192.0.2.1".parse().unwrap());
        assert_eq!((p.max_message_hops, p.dsn_return_default), (100, None), "the Guide's defaults");
        let on = |line: &str| {
            let c = parse(&format!("smtp-listener 127.0.0.1:25\n<source 0/0>\n {line}\n</source>\n")).unwrap();
            c.source_policy("192.0.2.1".parse().unwrap()).generate_bounces
        };
        assert!(!on("suppress-local-dsn yes") && on("suppress-local-dsn no"), "generate-bounces' opposite");
    }

    /// The Guide's examples of `mx-connection-limit` and `ip-connection-limit`: each MX name
    /// and each address counted on its own; the most specific CIDR wins.
    #[test]
    fn hop_connection_limits() {
        let c = parse(
            "smtp-listener 127.0.0.1:25\nmx-connection-limit *.secureserver.net 20\nmx-connection-limit *.aspmx.l.google.com 5\n\
             ip-connection-limit 173.194/16 50\nip-connection-limit 104.47.2.33 1\nip-connection-limit 104.47/16 9\n",
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            c.hop_limits("mx1.SecureServer.net.", ip("10.0.0.1")),
            [("mx:mx1.secureserver.net".to_string(), 20)]
        );
        assert_eq!(
            c.hop_limits("alt1.aspmx.l.google.com", ip("173.194.1.2")),
            [("mx:alt1.aspmx.l.google.com".to_string(), 5), ("ip:173.194.1.2".to_string(), 50)]
        );
        assert_eq!(c.hop_limits("x.outlook.com", ip("104.47.2.33")), [("ip:104.47.2.33".to_string(), 1)]);
        assert_eq!(c.hop_limits("x.outlook.com", ip("104.47.9.9")), [("ip:104.47.9.9".to_string(), 9)]);
        assert!(c.hop_limits("mx.example.com", ip("192.0.2.1")).is_empty());
        assert!(parse("smtp-listener 127.0.0.1:25\nip-connection-limit 10/8 lots\n").is_err());
        // `name-server` is `dns-server` (port 53); a second one is warned about.
        let c = parse("smtp-listener 127.0.0.1:25\nname-server 10.1.2.3\nname-server 8.8.8.8\n").unwrap();
        assert_eq!(c.dns_server, Some("10.1.2.3:53".parse().unwrap()));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    }

    #[test]
    fn management_api_access_levels_by_longest_prefix() {
        let c = parse("smtp-listener 127.0.0.1:25\nhttp-mgmt-port 8080\nhttp-access 10.0.0.0/8 monitor\nhttp-access 10.1.0.0/16 operator\nhttp-access 10.1.2.3 none\nhttp-api-key 0123456789abcdef\n").unwrap();
        let m = c.mgmt.as_ref().unwrap();
        assert_eq!(m.listen, "0.0.0.0:8080".parse().unwrap(), "a bare port listens on every address");
        assert_eq!(m.access_of("10.9.9.9".parse().unwrap()), Access::Monitor);
        assert_eq!(m.access_of("10.1.9.9".parse().unwrap()), Access::Operator);
        assert_eq!(m.access_of("10.1.2.3".parse().unwrap()), Access::None);
        assert_eq!(m.access_of("127.0.0.1".parse().unwrap()), Access::None, "rules given: only they count");
        assert_eq!(m.api_key.as_deref(), Some("0123456789abcdef"));
        let open = parse("smtp-listener 127.0.0.1:25\nhttp-mgmt-port 127.0.0.1:9000\n").unwrap();
        let m = open.mgmt.unwrap();
        assert_eq!(m.access_of("127.0.0.1".parse().unwrap()), Access::Admin, "no rules: loopback is admin");
        assert_eq!(m.access_of("192.0.2.1".parse().unwrap()), Access::None);
        let e =
            parse("smtp-listener 127.0.0.1:25\nhttp-mgmt-port 8080\nhttp-access 10.0.0.0/8 superuser\n").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (3, "unknown access level `superuser`"));
        let e = parse("smtp-listener 127.0.0.1:25\nhttp-api-key short\n").unwrap_err();
        assert!(e.hint.contains("16 random characters"), "{e}");
        let e = parse("smtp-listener 127.0.0.1:25\nhttp-mgmt-port eighty\n").unwrap_err();
        assert!(e.message.contains("not a port"), "{e}");
    }

    #[test]
    fn default_config_parses() {
        let c = parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.listeners.iter().map(|l| l.addr).collect::<Vec<_>>(), ["127.0.0.1:2525".parse().unwrap()]);
        assert!(c.source_policy("127.0.0.1".parse().unwrap()).always_allow_relaying);
        assert!(!c.source_policy("192.0.2.1".parse().unwrap()).always_allow_relaying);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn unknown_directive_names_line_and_nearest() {
        let err = parse("smtp-listener 127.0.0.1:25\n<domain *>\n  max-smtp-outt 3\n</domain>\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf:3: unknown directive `max-smtp-outt` in <domain> (hint: did you mean `max-smtp-out`?)"
        );
    }

    #[test]
    fn bad_values_name_line() {
        let err = parse("smtp-listener 127.0.0.1:25\n<domain *>\nretry-after 10m,zz\n</domain>\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("`zz` is not a duration"), "{err}");
        let err = parse("smtp-listener nowhere\n").unwrap_err();
        assert_eq!((err.line, err.message.contains("IP:PORT")), (1, true));
    }

    #[test]
    fn domain_settings_merge_wildcard_parent_exact() {
        let c = parse(
            "smtp-listener 127.0.0.1:25\n<domain *>\nmax-smtp-out 5\nretry-after 1m,2m\n</domain>\n<domain [*.]example.com>\nmax-smtp-out 7\n</domain>\n<domain a.example.com>\nsmtp-hosts [127.0.0.1]:2526\n</domain>\n<domain plain.test>\nmax-smtp-out 9\n</domain>\n",
        )
        .unwrap();
        let s = c.domain_settings("a.example.com");
        assert_eq!(s.max_smtp_out, 7);
        assert_eq!(c.domain_settings("sub.plain.test").max_smtp_out, 5, "a plain name is that domain only");
        assert_eq!(s.retry_after, vec![Duration::from_secs(60), Duration::from_secs(120)]);
        assert_eq!(s.smtp_hosts.unwrap()[0][0].port, 2526);
        assert_eq!(c.domain_settings("other.org").max_smtp_out, 5);
    }

    #[test]
    fn source_longest_prefix_wins() {
        let c = parse("smtp-listener 127.0.0.1:25\n<source 0/0>\nalways-allow-relaying no\n</source>\n<source 127.0.0.0/8>\nalways-allow-relaying yes\nmax-message-size 1M\n</source>\n").unwrap();
        let p = c.source_policy("127.0.0.9".parse().unwrap());
        assert!(p.always_allow_relaying);
        assert_eq!(p.max_message_size, 1 << 20);
        assert!(!c.source_policy("8.8.8.8".parse().unwrap()).always_allow_relaying);
    }

    #[test]
    fn acct_file_records_fields_and_turnover() {
        let text = "smtp-listener 127.0.0.1:25\n\
            <acct-file /tmp/a.csv>\n records delivery, bounce,transient\n record-fields b *,!orcpt,header_X-Job\n \
            record-fields d timeQueued, bounceCat,ORIG\n map-header-to-field d header_x-to rcpt\n move-interval 5m\n \
            delete-after never\n user-string eu-1 west\n iso-times no\n</acct-file>\n\
            <acct-file |/usr/bin/handler --log x>\n records all\n</acct-file>\n";
        let c = parse(text).unwrap();
        let a = &c.acct_files[0];
        assert_eq!(a.records, vec![RecordType::Delivered, RecordType::Bounced, RecordType::Transient]);
        let names = |t| a.fields_of(t).iter().map(|f| f.name().into_owned()).collect::<Vec<_>>();
        assert_eq!(names(RecordType::Delivered), ["timeQueued", "bounceCat", "orig"]);
        let b = names(RecordType::Bounced);
        assert!(
            !b.contains(&"orcpt".to_string()) && b.last().unwrap() == "header_X-Job" && b[0] == "timeLogged",
            "{b:?}"
        );
        assert_eq!(a.fields_of(RecordType::Transient), acct::default_fields(RecordType::Transient));
        assert_eq!((a.move_interval, a.delete_after), (Some(Duration::from_secs(300)), None));
        assert_eq!((a.user_string.as_str(), a.iso_times), ("eu-1 west", false));
        assert_eq!(c.acct_headers, ["X-Job", "x-to"]);
        assert_eq!(c.acct_files[1].sink, AcctSink::Pipe("/usr/bin/handler --log x".into()));
        assert_eq!(c.acct_files[1].records.len(), 8);
        // `r` rows are built only when some file writes them (here the pipe's `all`).
        assert!(c.acct_records(RecordType::Received));
        let first_only = parse(&text[..text.find("<acct-file |").unwrap()]).unwrap();
        assert!(first_only.acct_records(RecordType::Delivered) && !first_only.acct_records(RecordType::Received));
        let err = parse("smtp-listener 127.0.0.1:25\n<acct-file a.csv>\n record-fields d *,dsnStatuss\n</acct-file>\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf:3: unknown accounting field `dsnStatuss` (hint: did you mean `dsnStatus`?)"
        );
    }
}

#[cfg(test)]
mod vmta_tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        load("v.conf", text, &mut |_| Err("no includes".into()))
    }

    const BASE: &str = "smtp-listener 127.0.0.1:25\n\
        <virtual-mta mta1>\n smtp-source-host 127.0.0.2 mta1.test\n <domain slow.test>\n  max-smtp-out 2\n </domain>\n</virtual-mta>\n\
        <virtual-mta mta2>\n smtp-source-host 127.0.0.3 mta2.test\n</virtual-mta>\n\
        <virtual-mta-pool pool1>\n virtual-mta mta1\n virtual-mta mta2\n</virtual-mta-pool>\n";

    #[test]
    fn vmtas_pools_and_overrides() {
        let c = parse(&format!("{BASE}<source 127.0.0.1>\n default-virtual-mta pool1\n</source>\n<domain slow.test>\n max-smtp-out 9\n</domain>\n")).unwrap();
        assert_eq!(c.vmtas["mta1"].source_ip, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(c.vmtas["mta2"].host_name.as_deref(), Some("mta2.test"));
        assert_eq!(c.pools["pool1"], vec!["mta1".to_string(), "mta2".to_string()]);
        assert_eq!(c.vmta_target("pool1"), Some(VmtaTarget::Pool("pool1".into())));
        assert_eq!(c.vmta_target("mta2"), Some(VmtaTarget::Vmta("mta2".into())));
        assert_eq!(c.vmta_target("nope"), None);
        assert_eq!(c.queue_settings("slow.test", "mta1").max_smtp_out, 2, "VMTA's <domain> wins");
        assert_eq!(c.queue_settings("slow.test", "mta2").max_smtp_out, 9);
        assert_eq!(c.queue_settings("slow.test", "default").max_smtp_out, 9);
        assert_eq!(c.source_policy("127.0.0.1".parse().unwrap()).default_virtual_mta.as_deref(), Some("pool1"));
    }

    #[test]
    fn undefined_names_are_errors_with_hints() {
        let err = parse(&format!("{BASE}<source 127.0.0.1>\n default-virtual-mta pool2\n</source>\n")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "v.conf:16: virtual MTA or pool `pool2` is not defined (hint: did you mean `pool1`?)"
        );
        let err = parse("smtp-listener 127.0.0.1:25\n<virtual-mta-pool p>\n virtual-mta ghost\n</virtual-mta-pool>\n")
            .unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (3, "virtual MTA `ghost` is not defined"));
        let err =
            parse("smtp-listener 127.0.0.1:25\n<virtual-mta m>\n smtp-source-host nowhere m.test\n</virtual-mta>\n")
                .unwrap_err();
        assert_eq!(
            (err.line, err.message.as_str()),
            (3, "`nowhere` is not an address or CIDR; write e.g. 10.0.0.0/8 or 0/0")
        );
        let err =
            parse("smtp-listener 127.0.0.1:25\n<virtual-mta m>\n smtp-source-host m.test 192.0.2.1\n</virtual-mta>\n")
                .unwrap_err();
        assert_eq!(err.to_string(), "v.conf:3: `m.test` is not an IP address (hint: the address comes first: `smtp-source-host 192.0.2.1 m.test`)");
    }

    /// The two shapes postmastery's pmtaproxy README gives (5.0r8's `smtp-proxy-source-host`,
    /// 5.0r2's `<proxy>` + `use-proxy` beside `smtp-source-host`) and the global forms.
    #[test]
    fn proxies_in_both_shapes_and_inherited() {
        let c = parse(
            "smtp-listener 127.0.0.1:25\n\
             <proxy prox01>\n server 65.30.42.1:5000\n client 65.30.42.1:0 prox01.example.com\n</proxy>\n\
             <proxy prox02>\n server proxy.example.net:5001\n client [2001:db8::7]:0 prox02.example.com\n protocol-version 2\n</proxy>\n\
             <virtual-mta new>\n smtp-proxy-source-host 140.201.38.1 65.30.42.1:5000 65.30.42.1 prox01.example.com\n proxy-protocol 2\n</virtual-mta>\n\
             <virtual-mta old>\n smtp-source-host 140.201.38.1 pmta01.example.com\n use-proxy PROX01, prox02\n</virtual-mta>\n\
             <virtual-mta plain>\n smtp-source-host 140.201.38.2 plain.example.com\n</virtual-mta>\n\
             <virtual-mta bare>\n host-name bare.example.com\n</virtual-mta>\n\
             smtp-proxy-source-host 10/8 abc.com:5000 10.1.2.3:2525 baz.quux.com\n",
        )
        .unwrap();
        let new = &c.vmtas["new"].proxies;
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].local, Some("140.201.38.1".parse().unwrap()));
        assert_eq!(new[0].server_addr, Some("65.30.42.1:5000".parse().unwrap()));
        assert_eq!((new[0].client, new[0].version), ("65.30.42.1:0".parse().unwrap(), 2));
        let old = &c.vmtas["old"].proxies;
        let names: Vec<&str> = old.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["prox01", "prox02"], "in order, names in any case");
        assert!(old.iter().all(|p| p.local == Some("140.201.38.1".parse().unwrap())), "from its smtp-source-host");
        assert_eq!((old[1].server_addr, old[1].port, old[1].version), (None, 5001, 2), "a name is looked up at start");
        assert!(c.vmtas["plain"].proxies.is_empty(), "its own smtp-source-host: no global proxy");
        let bare = &c.vmtas["bare"].proxies;
        assert_eq!(bare.len(), 1, "no source of its own: the global proxy");
        assert_eq!((bare[0].local, bare[0].client.port(), bare[0].host_name.as_str()), (None, 2525, "baz.quux.com"));
        assert_eq!(c.proxies_of("default"), c.global_proxies.as_slice());
        assert_eq!(c.proxies_of("default").len(), 1);
    }

    #[test]
    fn proxy_mistakes_are_errors_at_their_line() {
        let e = |text: &str| parse(&format!("smtp-listener 127.0.0.1:25\n{text}")).unwrap_err().to_string();
        assert_eq!(
            e("<virtual-mta m>\n use-proxy nope\n</virtual-mta>\n"),
            "v.conf:3: proxy `nope` is not defined (hint: define it with `<proxy nope>` holding `server` and `client`)"
        );
        assert_eq!(
            e("<proxy p>\n server 10.0.0.1:5000\n</proxy>\n"),
            "v.conf:2: <proxy p> needs a `server` and a `client` (hint: write `server 10.0.0.9:5000` and `client 203.0.113.7 mta1.example.com` in it)"
        );
        let all =
            check(
                "v.conf",
                "<proxy p>\n server 10.0.0.1\n client 10.0.0.2 a.test\n</proxy>\n",
                &mut |_| Err("".into()),
            );
        assert!(
            all.errors.iter().any(|e| e.to_string().starts_with("v.conf:2: `10.0.0.1` is not a proxy server")),
            "{:?}",
            all.errors
        );
        assert!(e("<virtual-mta m>\n proxy-protocol 3\n</virtual-mta>\n")
            .starts_with("v.conf:3: `3` is not a PROXY protocol version"));
        assert!(e("<virtual-mta m>\n smtp-proxy-source-host 10.0.0.1 10.0.0.2:5000 m.test\n</virtual-mta>\n")
            .starts_with("v.conf:3: `smtp-proxy-source-host` takes a local address"));
    }
}

#[cfg(test)]
mod bounce_pattern_tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        load("b.conf", text, &mut |_| Err("no includes".into()))
    }

    #[test]
    fn patterns_keep_case_and_validate_categories() {
        let c = parse("smtp-listener 127.0.0.1:25\n<bounce-category-patterns>\n /[Rr]esources/ bad-connection\n /SPAM/i spam-related\n</bounce-category-patterns>\n").unwrap();
        assert_eq!(c.bounce_patterns.len(), 2);
        assert!(
            c.bounce_patterns[0].regex.is_match("Resources gone") && !c.bounce_patterns[0].regex.is_match("RESOURCES")
        );
        assert!(c.bounce_patterns[1].regex.is_match("looks like spam"));
        // Categories of one's own are PowerMTA's too; one near a built-in name is warned about.
        let c = parse(
            "smtp-listener 127.0.0.1:25\n<bounce-category-patterns>\n /x/ spam-relatd\n /busy/ server-busy\n /^2.\\d.\\d/ success\n // other # catch-all\n</bounce-category-patterns>\n",
        )
        .unwrap();
        assert_eq!(
            c.bounce_patterns.iter().map(|p| &*p.category).collect::<Vec<_>>(),
            ["spam-relatd", "server-busy", "success", "other"]
        );
        assert!(c.bounce_patterns[3].regex.is_match("anything"), "`//` matches every reply");
        let shown: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            shown,
            ["b.conf:3: `spam-relatd` is a category of your own, not one of PowerMTA's (did you mean `spam-related`?)"]
        );
        let err =
            parse("smtp-listener 127.0.0.1:25\n<bounce-category-patterns>\n /(/ other\n</bounce-category-patterns>\n")
                .unwrap_err();
        assert!(err.message.starts_with("bad regex `/(/`"), "{err}");
    }
}

#[cfg(test)]
mod pattern_list_tests {
    use super::*;

    #[test]
    fn pattern_lists_parse_and_are_checked() {
        let text = "smtp-listener 127.0.0.1:25\n<smtp-pattern-list errs>\n reply /^421 .* too many errors/ mode=backoff,backoff-to-normal-after=30m\n reply /^452 4\\.2\\.2/ bounce-rcpt\n reply /x/ skip-mx\n reply /y/ disable-source-ip,reenable-after=5m\n reply /z/ disable-source-ip\n</smtp-pattern-list>\n<domain *>\n smtp-pattern-list errs\n backoff-max-msg-rate 10/s\n queue-priority 80\n</domain>\n<domain b.test>\n disable-mx-rollup yes\n</domain>\n";
        let c = load("p.conf", text, &mut |_| Err("no".into())).unwrap();
        let rules = &c.pattern_lists["errs"];
        assert_eq!(rules[0].actions, vec![PatternAction::Backoff(Some(Duration::from_secs(1800)))]);
        assert!(rules[0].regex.is_match("421 4.7.0 too many errors"));
        assert_eq!(rules[1].actions, vec![PatternAction::BounceRcpt]);
        assert_eq!(rules[2].actions, vec![PatternAction::SkipMx]);
        assert_eq!(rules[3].actions, vec![PatternAction::DisableSourceIp(Duration::from_secs(300))]);
        assert_eq!(rules[4].actions, vec![PatternAction::DisableSourceIp(REENABLE_AFTER_DEFAULT)]);
        let (a, b) = (c.domain_settings("a.test"), c.domain_settings("b.test"));
        assert_eq!((a.queue_priority, a.mx_rollup, b.mx_rollup), (80, true, false));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.domain_settings("a.test").pattern_list.as_deref(), Some("errs"));
        assert_eq!(
            c.domain_settings("a.test").backoff_max_msg_rate,
            Some(Rate { count: 10, period: Duration::from_secs(1) })
        );
        let err =
            load("p.conf", "smtp-listener 127.0.0.1:25\n<domain *>\n smtp-pattern-list nope\n</domain>\n", &mut |_| {
                Err("no".into())
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.conf:3: smtp-pattern-list `nope` is not defined (hint: define it with `<smtp-pattern-list NAME>`)"
        );
    }
}

#[cfg(test)]
mod suffix_tests {
    use super::*;

    #[test]
    fn pool_domain_blocks_override_members_and_global() {
        let text = "smtp-listener 127.0.0.1:25\n<domain *>\n max-smtp-out 10\n</domain>\n<virtual-mta m1>\n <domain b.test>\n max-smtp-out 5\n max-msg-per-connection 7\n </domain>\n</virtual-mta>\n<virtual-mta-pool p1>\n virtual-mta m1\n <domain b.test>\n max-smtp-out 2\n </domain>\n</virtual-mta-pool>\n";
        let c = load("t.conf", text, &mut |_| Err("no".into())).unwrap();
        let s = |d: &str, v: &str| {
            let s = c.queue_settings(d, v);
            (s.max_smtp_out, s.max_msg_per_connection)
        };
        assert_eq!(s("b.test", "p1"), (2, 7), "the pool's block, over its member's");
        assert_eq!(s("b.test", "m1"), (5, 7));
        assert_eq!(s("a.test", "p1"), (10, 0));
        let err = load(
            "t.conf",
            "<virtual-mta-pool p1>\n virtual-mta m1\n <source 0/0>\n </source>\n</virtual-mta-pool>\n",
            &mut |_| Err("no".into()),
        );
        assert!(err.is_err());
    }

    #[test]
    fn queue_to_follows_the_most_specific_block() {
        let c = load(
            "q.conf",
            "smtp-listener 127.0.0.1:25\n<domain *>\n queue-to all.test\n</domain>\n<domain *.b.test>\n queue-to bee.test\n</domain>\n",
            &mut |_| Err("no".into()),
        )
        .unwrap();
        assert_eq!(c.queue_domain("x.b.test"), "bee.test", "parent beats wildcard");
        assert_eq!(c.queue_domain("other.test"), "all.test");
        assert_eq!(
            c.queue_domain("x.b.test"),
            c.domain_settings("x.b.test").queue_to.unwrap(),
            "same answer as the full settings"
        );
    }
}

#[cfg(test)]
mod traffic_class_tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        load("t.conf", text, &mut |_| Err("no includes".into())).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn classes_reserve_the_highest_shards_and_leave_the_rest() {
        let c = parse(
            "smtp-listener 127.0.0.1:25\n<traffic-class transactional>\n shards 1\n</traffic-class>\n\
             <traffic-class alerts>\n shards 2\n</traffic-class>\n\
             <virtual-mta tx>\n traffic-class transactional\n</virtual-mta>\n<virtual-mta bulk>\n</virtual-mta>\n\
             <virtual-mta-pool txpool>\n virtual-mta tx\n</virtual-mta-pool>\n\
             <source 10.1.0.0/16>\n traffic-class alerts\n</source>\n",
        )
        .unwrap();
        let sets = c.shard_sets(6).unwrap();
        assert_eq!(sets.general, 0..3);
        assert_eq!(sets.of(Some("transactional")), 3..4);
        assert_eq!(sets.of(Some("alerts")), 4..6);
        assert_eq!(sets.of(None), 0..3);
        assert_eq!(c.vmta_class("tx"), Some("transactional"));
        assert_eq!(c.vmta_class("txpool"), Some("transactional"));
        assert_eq!(c.vmta_class("bulk"), None);
        let policy = c.source_policy("10.1.2.3".parse().unwrap());
        assert_eq!(policy.traffic_class.as_deref(), Some("alerts"));
        let err = c.shard_sets(3).unwrap_err();
        assert!(err.contains("reserve 3 shards") && err.contains("runs 3"), "{err}");
    }

    #[test]
    fn a_class_not_defined_is_an_error_at_its_line() {
        let err = parse("smtp-listener 127.0.0.1:25\n<virtual-mta tx>\n traffic-class transactionl\n</virtual-mta>\n")
            .unwrap_err();
        assert!(err.contains("traffic-class `transactionl` is not defined") && err.contains("line: 3"), "{err}");
        let err = parse("smtp-listener 127.0.0.1:25\n<traffic-class t>\n</traffic-class>\n").unwrap_err();
        assert!(err.contains("needs `shards N`"), "{err}");
    }
}
