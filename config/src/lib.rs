//! sluice-config: PowerMTA-style configuration → typed, validated [`Config`].
//! Errors carry file:line and a hint; the only file access is the include loader the caller
//! passes in.

pub mod ast;
pub mod units;

use ast::{Node, Span};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
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

/// Policy for clients matching a `<source CIDR>`.
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    pub always_allow_relaying: bool,
    pub smtp_service: bool,
    pub max_message_size: u64,
    pub max_rcpt_per_message: u32,
    pub process_x_virtual_mta: bool,
    pub default_virtual_mta: Option<String>,
    /// Keep the `x-virtual-mta:` header when relaying (it is removed by default).
    pub retain_x_virtual_mta: bool,
    /// Refuse a message whose `x-virtual-mta:` names no VMTA or pool (else: the default).
    pub reject_invalid_virtual_mta: bool,
    pub add_received_header: bool,
    pub hide_message_source: bool,
    /// `generate-bounces yes`: a recipient that bounces gets an RFC 3464 DSN sent to the
    /// message's envelope sender (never for a null sender).
    pub generate_bounces: bool,
    /// `allow-auth yes`: AUTH is offered (PLAIN, LOGIN, CRAM-MD5).
    pub allow_auth: bool,
    /// `allow-starttls` (default yes): STARTTLS is offered when a certificate is configured.
    pub allow_starttls: bool,
    /// `require-auth yes`: MAIL is refused until the client has authenticated.
    pub require_auth: bool,
    /// `require-starttls-before-auth yes`: AUTH only inside TLS.
    pub require_starttls_before_auth: bool,
    /// `smtp-max-auth-failure-rate`: failed AUTH attempts allowed per client IP.
    pub max_auth_failure_rate: Rate,
    /// Sender restrictions (empty: any): `allowed-mail-from-domain`, `allowed-virtual-mta`.
    pub restrictions: SenderRestrictions,
    /// `check-spf-inbound`, `check-dkim-inbound`, `check-dmarc-inbound`,
    /// `check-arc-inbound`: verify and add an Authentication-Results header.
    pub check_spf: bool,
    pub check_dkim: bool,
    pub check_dmarc: bool,
    pub check_arc: bool,
    /// `arc-sign yes`: ARC-seal what this source relays (with the global `arc-key`).
    pub arc_sign: bool,
    /// `suppression-lists NAME[,NAME]`: recipients on these `<address-list>`s are refused.
    pub suppression_lists: Vec<String>,
    /// `process-x-job yes`: the `jobid-header` (default `x-job`) names the message's job,
    /// which every accounting record carries; the header is removed unless `retain-x-job`.
    pub process_x_job: bool,
    pub jobid_header: String,
    pub retain_x_job: bool,
    /// `bare-lf normalize|reject`.
    pub bare_lf: BareLf,
    /// `long-lines encode|reject`.
    pub long_lines: LongLines,
}

/// `bare-lf`: what a line ending in LF alone becomes (a lone "." next to one is refused as
/// SMTP smuggling either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareLf {
    /// Taken as a line end and spooled as CRLF (the default, as Postfix's
    /// `smtpd_forbid_bare_newline = normalize`).
    Normalize,
    /// The message is refused with 550 5.6.0.
    Reject,
}

/// `long-lines`: what a message with a line over 998 octets becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongLines {
    /// Wrapped losslessly (text re-encoded as quoted-printable, header fields folded): the
    /// default.
    Encode,
    /// The message is refused with 550 5.6.0.
    Reject,
}

/// `downgrade-8bit`: 8-bit mail for a receiver that does not offer 8BITMIME (RFC 6152 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downgrade8bit {
    /// Converted to quoted-printable (the default).
    QuotedPrintable,
    /// Bounced with 554 5.6.3 (conversion required but not permitted, RFC 3463).
    Bounce,
}

/// One value of a fixed set: `choices` pairs each accepted word with its value.
fn choice<T: Copy>(name: &str, v: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices.iter().find(|(w, _)| w.eq_ignore_ascii_case(v)).map(|(_, t)| *t).ok_or_else(|| {
        let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
        format!("`{name}` takes one of {}, not `{v}`", words.join(", "))
    })
}

/// One line of an `<address-list>`.
#[derive(Debug, Clone, PartialEq)]
pub enum ListEntry {
    /// `address a@b.com` (or a local part, `address abuse`: any domain).
    Address(String),
    /// `address /regex/`.
    Regex(String),
    /// `address-file F`: one address or local part per line.
    File(PathBuf),
    /// `domain d.com`.
    Domain(String),
    /// `address-hash-file F`: lower-case hex SHA-256 of the lower-cased address per line.
    HashFile(PathBuf),
    /// `address-hmac-file F KEY`: the same with HMAC-SHA256 and KEY.
    HmacFile(PathBuf, String),
}

/// `<feedback-loop-processor>`: reports sent to its addresses become `f` records.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackProcessor {
    /// The report addresses (its nested `<address-list>`).
    pub addresses: AddressListConfig,
    /// `deliver-unmatched-email yes`: mail to those addresses that is no report is relayed
    /// (default: accepted and dropped).
    pub deliver_unmatched: bool,
    /// `auto-suppress-list NAME`: complaining recipients are appended to that list's
    /// `address-file`.
    pub auto_suppress: Option<String>,
}

/// `<address-list NAME>`.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressListConfig {
    pub name: String,
    pub entries: Vec<(ListEntry, Span)>,
}

impl SourcePolicy {
    /// Does a message from this source need the (DNS-backed) authentication checks?
    pub fn checks_inbound(&self) -> bool {
        self.check_spf || self.check_dkim || self.check_dmarc || self.check_arc || self.arc_sign
    }
}

/// A certificate chain and its private key (PEM files), and the line that named them.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub span: Span,
}

/// Who may be named as the sender, and which VMTAs a message may use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SenderRestrictions {
    /// Lower-case domains; a MAIL FROM domain must be one of them or a subdomain.
    pub mail_from_domains: Vec<String>,
    /// VMTA or pool names a message may select.
    pub virtual_mtas: Vec<String>,
}

impl SenderRestrictions {
    pub fn mail_from_allowed(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.mail_from_domains.is_empty()
            || self.mail_from_domains.iter().any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
    }

    pub fn vmta_allowed(&self, vmta: &str) -> bool {
        self.virtual_mtas.is_empty() || self.virtual_mtas.iter().any(|v| v == vmta)
    }
}

/// `<smtp-user NAME>`: credentials for SMTP AUTH and what the user gets once authenticated.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpUser {
    pub name: String,
    /// As written: plain text, or a hash (`$argon2id$...`, `$6$...` SHA-512-crypt).
    pub password: String,
    /// The named `<source {NAME}>` whose policy the session takes (default `{auth}`).
    pub source: String,
    /// Restrictions of the user's own (beside the source's).
    pub restrictions: SenderRestrictions,
    pub span: Span,
}

impl Default for SourcePolicy {
    fn default() -> Self {
        SourcePolicy {
            always_allow_relaying: false,
            smtp_service: true,
            max_message_size: 50 << 20,
            max_rcpt_per_message: 1000,
            process_x_virtual_mta: false,
            default_virtual_mta: None,
            retain_x_virtual_mta: false,
            reject_invalid_virtual_mta: false,
            add_received_header: true,
            hide_message_source: false,
            generate_bounces: false,
            allow_auth: false,
            allow_starttls: true,
            require_auth: false,
            require_starttls_before_auth: false,
            max_auth_failure_rate: Rate { count: 3, period: Duration::from_secs(300) },
            restrictions: SenderRestrictions::default(),
            check_spf: false,
            check_dkim: false,
            check_dmarc: false,
            check_arc: false,
            arc_sign: false,
            suppression_lists: Vec::new(),
            process_x_job: false,
            jobid_header: "x-job".into(),
            retain_x_job: false,
            bare_lf: BareLf::Normalize,
            long_lines: LongLines::Encode,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceRule {
    pub cidr: Cidr,
    pub policy: SourcePolicy,
}

/// Effective per-destination settings (after `*` → parent → exact merging).
#[derive(Debug, Clone, PartialEq)]
pub struct DomainSettings {
    pub max_smtp_out: u32,
    pub max_msg_per_connection: u32,
    pub max_rcpt_per_message: u32,
    pub retry_after: Vec<Duration>,
    pub bounce_after: Duration,
    pub smtp_hosts: Option<Vec<Vec<HostPort>>>,
    /// `max-msg-rate`: messages per period for the queue (None: unlimited).
    pub max_msg_rate: Option<Rate>,
    /// `max-connect-rate`: new connections per period for the queue.
    pub max_connect_rate: Option<Rate>,
    /// `smtp-pattern-list NAME`: the rules every reply for this queue is checked against.
    pub pattern_list: Option<String>,
    /// Limits while the queue is in backoff mode.
    pub backoff_max_msg_rate: Option<Rate>,
    pub backoff_max_smtp_out: Option<u32>,
    pub backoff_retry_after: Vec<Duration>,
    /// How long backoff lasts when the pattern does not say (`backoff-to-normal-after`).
    pub backoff_to_normal_after: Duration,
    /// `backoff-to-normal-after-delivery yes`: the first clean delivery ends backoff.
    pub backoff_to_normal_after_delivery: bool,
    /// `adaptive-rate yes`: the message rate follows the receiver (AIMD), up to `max-msg-rate`.
    pub adaptive_rate: bool,
    /// `queue-to D`: this domain's mail goes into D's queue, with D's settings and next hops.
    pub queue_to: Option<String>,
    /// `queue-priority N` (0-100): when queues compete for the same source IPs' connections,
    /// higher ones get them first.
    pub queue_priority: u8,
    /// MX rollup (on unless `disable-mx-rollup yes`): domains whose MX sets are equal, and
    /// whose settings are equal, share one queue.
    pub mx_rollup: bool,
    /// `dkim-sign yes`: mail to this domain is signed with the `domain-key` matching its
    /// From domain.
    pub dkim_sign: bool,
    pub dkim: DkimOptions,
    /// `use-starttls` (default yes): STARTTLS when the receiver offers it.
    pub use_starttls: bool,
    /// `require-starttls`: no delivery without TLS (deferred with 4.7.10).
    pub require_starttls: bool,
    /// `downgrade-8bit quoted-printable|bounce`.
    pub downgrade_8bit: Downgrade8bit,
}

/// How a signature is made (`dkim-headers`, `dkim-header-canon`, `dkim-body-canon`,
/// `dkim-identity`, `dkim-expire-after`).
#[derive(Debug, Clone, PartialEq)]
pub struct DkimOptions {
    /// Header fields signed when present.
    pub headers: Vec<String>,
    /// relaxed (true, the default) or simple.
    pub header_relaxed: bool,
    pub body_relaxed: bool,
    /// `i=`: the agent or user identifier.
    pub identity: Option<String>,
    /// `x=`: the signature expires this long after signing.
    pub expire_after: Option<Duration>,
}

/// Header fields signed by default: the ones RFC 6376 §5.4.1 recommends, plus the list and
/// unsubscribe headers that mailbox providers require of bulk mail (RFC 8058).
pub const DKIM_HEADERS_DEFAULT: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-ID",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Feedback-ID",
];

impl Default for DkimOptions {
    fn default() -> Self {
        DkimOptions {
            headers: DKIM_HEADERS_DEFAULT.iter().map(|h| h.to_string()).collect(),
            header_relaxed: true,
            body_relaxed: true,
            identity: None,
            expire_after: None,
        }
    }
}

/// `domain-key SELECTOR,DOMAIN|*,KEYFILE`: a signing key for a domain (and its subdomains),
/// or for any domain (`*`). Read and checked when sluice starts.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainKey {
    pub selector: String,
    /// Lower case; `*` for any From domain (then `d=` is the From domain).
    pub domain: String,
    pub path: PathBuf,
    pub span: Span,
}

impl Default for DomainSettings {
    fn default() -> Self {
        DomainSettings {
            max_smtp_out: 20,
            max_msg_per_connection: 0,
            max_rcpt_per_message: 0,
            retry_after: vec![Duration::from_secs(600)],
            bounce_after: Duration::from_secs(4 * 86400 + 12 * 3600),
            smtp_hosts: None,
            max_msg_rate: None,
            max_connect_rate: None,
            pattern_list: None,
            backoff_max_msg_rate: None,
            backoff_max_smtp_out: None,
            backoff_retry_after: vec![Duration::from_secs(3600)],
            backoff_to_normal_after: Duration::from_secs(3600),
            backoff_to_normal_after_delivery: false,
            adaptive_rate: false,
            queue_to: None,
            queue_priority: 50,
            mx_rollup: true,
            dkim_sign: false,
            dkim: DkimOptions::default(),
            use_starttls: true,
            require_starttls: false,
            downgrade_8bit: Downgrade8bit::QuotedPrintable,
        }
    }
}

/// What one `<domain>` block sets; unset fields inherit.
#[derive(Debug, Clone, Default)]
struct DomainOverrides {
    max_smtp_out: Option<u32>,
    max_msg_per_connection: Option<u32>,
    max_rcpt_per_message: Option<u32>,
    retry_after: Option<Vec<Duration>>,
    bounce_after: Option<Duration>,
    smtp_hosts: Option<Vec<Vec<HostPort>>>,
    max_msg_rate: Option<Rate>,
    max_connect_rate: Option<Rate>,
    pattern_list: Option<String>,
    backoff_max_msg_rate: Option<Rate>,
    backoff_max_smtp_out: Option<u32>,
    backoff_retry_after: Option<Vec<Duration>>,
    backoff_to_normal_after: Option<Duration>,
    backoff_to_normal_after_delivery: Option<bool>,
    adaptive_rate: Option<bool>,
    queue_to: Option<String>,
    queue_priority: Option<u8>,
    mx_rollup: Option<bool>,
    dkim_sign: Option<bool>,
    dkim_headers: Option<Vec<String>>,
    dkim_header_relaxed: Option<bool>,
    dkim_body_relaxed: Option<bool>,
    dkim_identity: Option<String>,
    dkim_expire_after: Option<Duration>,
    use_starttls: Option<bool>,
    require_starttls: Option<bool>,
    downgrade_8bit: Option<Downgrade8bit>,
}

impl DomainOverrides {
    fn apply(&self, to: &mut DomainSettings) {
        if let Some(v) = self.max_smtp_out {
            to.max_smtp_out = v;
        }
        if let Some(v) = self.max_msg_per_connection {
            to.max_msg_per_connection = v;
        }
        if let Some(v) = self.max_rcpt_per_message {
            to.max_rcpt_per_message = v;
        }
        if let Some(v) = &self.retry_after {
            to.retry_after = v.clone();
        }
        if let Some(v) = self.bounce_after {
            to.bounce_after = v;
        }
        if let Some(v) = &self.smtp_hosts {
            to.smtp_hosts = Some(v.clone());
        }
        if let Some(v) = self.max_msg_rate {
            to.max_msg_rate = Some(v);
        }
        if let Some(v) = self.max_connect_rate {
            to.max_connect_rate = Some(v);
        }
        if let Some(v) = &self.pattern_list {
            to.pattern_list = Some(v.clone());
        }
        if let Some(v) = self.backoff_max_msg_rate {
            to.backoff_max_msg_rate = Some(v);
        }
        if let Some(v) = self.backoff_max_smtp_out {
            to.backoff_max_smtp_out = Some(v);
        }
        if let Some(v) = &self.backoff_retry_after {
            to.backoff_retry_after = v.clone();
        }
        if let Some(v) = self.backoff_to_normal_after {
            to.backoff_to_normal_after = v;
        }
        if let Some(v) = self.adaptive_rate {
            to.adaptive_rate = v;
        }
        if let Some(v) = self.backoff_to_normal_after_delivery {
            to.backoff_to_normal_after_delivery = v;
        }
        if let Some(v) = &self.queue_to {
            to.queue_to = Some(v.clone());
        }
        if let Some(v) = self.queue_priority {
            to.queue_priority = v;
        }
        if let Some(v) = self.mx_rollup {
            to.mx_rollup = v;
        }
        if let Some(v) = self.dkim_sign {
            to.dkim_sign = v;
        }
        if let Some(v) = &self.dkim_headers {
            to.dkim.headers = v.clone();
        }
        if let Some(v) = self.dkim_header_relaxed {
            to.dkim.header_relaxed = v;
        }
        if let Some(v) = self.dkim_body_relaxed {
            to.dkim.body_relaxed = v;
        }
        if let Some(v) = &self.dkim_identity {
            to.dkim.identity = Some(v.clone());
        }
        if let Some(v) = self.dkim_expire_after {
            to.dkim.expire_after = Some(v);
        }
        if let Some(v) = self.use_starttls {
            to.use_starttls = v;
        }
        if let Some(v) = self.require_starttls {
            to.require_starttls = v;
        }
        if let Some(v) = self.downgrade_8bit {
            to.downgrade_8bit = v;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    Delivered,
    Bounced,
    Transient,
    QueueEvent,
    Received,
    Feedback,
    RemoteBounce,
}

impl RecordType {
    pub fn code(self) -> &'static str {
        match self {
            RecordType::Delivered => "d",
            RecordType::Bounced => "b",
            RecordType::Transient => "t",
            RecordType::QueueEvent => "tq",
            RecordType::Received => "r",
            RecordType::Feedback => "f",
            RecordType::RemoteBounce => "rb",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AcctFile {
    pub path: PathBuf,
    pub records: Vec<RecordType>,
    /// `record-fields TYPES FIELDS`: the columns written (None: all); `type` always first.
    pub fields: Option<Vec<String>>,
    /// `privacy-policy hmac-sha256 KEY`: local parts of addresses are hashed with KEY.
    pub privacy_key: Option<String>,
    /// `max-size SIZE`: the file is rotated (renamed with a time stamp) past this size.
    pub max_size: Option<u64>,
    /// `delete-after D`: rotated files older than this are deleted.
    pub delete_after: Option<Duration>,
}

/// What a management API client may do (`http-access CIDR LEVEL`): each level includes the
/// ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    None,
    /// Read status, queues, metrics, the web monitor.
    Monitor,
    /// Also pause, resume, schedule and set queue modes and jobs.
    Operator,
    /// Also delete mail, reload, rotate accounting files, inject over HTTP.
    Admin,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::None => "none",
            Access::Monitor => "monitor",
            Access::Operator => "operator",
            Access::Admin => "admin",
        }
    }
}

/// The management API: `http-mgmt-port`, `http-access`, `http-api-key`.
#[derive(Debug, Clone)]
pub struct Mgmt {
    /// `http-mgmt-port PORT` (every address, as PowerMTA) or `IP:PORT`.
    pub listen: SocketAddr,
    /// `http-access` rules; the longest matching prefix wins. None given: loopback is admin.
    pub access: Vec<(Cidr, Access)>,
    /// `http-api-key KEY`: a request bearing it in `X-API-Key` is admin from any address the
    /// access rules let in; HTTP injection needs it.
    pub api_key: Option<String>,
}

impl Mgmt {
    /// The access level of a client address, from the `http-access` rules.
    pub fn access_of(&self, ip: IpAddr) -> Access {
        if self.access.is_empty() {
            return if ip.is_loopback() { Access::Admin } else { Access::None };
        }
        self.access
            .iter()
            .filter(|(c, _)| c.contains(ip))
            .max_by_key(|(c, _)| c.prefix)
            .map(|(_, a)| *a)
            .unwrap_or(Access::None)
    }
}

/// A warning: a directive that sluice knows from PowerMTA but does not implement yet.
#[derive(Debug, Clone)]
pub struct Warning {
    pub span: Span,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.span, self.message)
    }
}

/// PowerMTA's bounce categories, the values of the accounting `bounceCat` column.
pub const BOUNCE_CATEGORIES: &[&str] = &[
    "bad-configuration",
    "bad-connection",
    "bad-domain",
    "bad-mailbox",
    "content-related",
    "inactive-mailbox",
    "invalid-sender",
    "message-expired",
    "no-answer-from-host",
    "other",
    "policy-related",
    "protocol-errors",
    "quota-issues",
    "relaying-issues",
    "routing-errors",
    "spam-related",
    "virus-related",
];

/// The regex type of bounce patterns (re-exported so callers need no regex dependency).
pub type BouncePatternRegex = regex::Regex;

/// One `<bounce-category-patterns>` line: a reply matching `regex` gets `category`.
#[derive(Debug, Clone)]
pub struct BouncePattern {
    pub regex: regex::Regex,
    pub category: &'static str,
}

/// What a matching reply does to its queue (PowerMTA's smtp-pattern-list actions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternAction {
    /// `mode=backoff`, with `backoff-to-normal-after=D` when given.
    Backoff(Option<Duration>),
    /// `mode=normal`.
    Normal,
    /// `bounce-rcpt`: this recipient bounces whatever the reply code.
    BounceRcpt,
    /// `defer-queue`: every ready recipient of the queue waits for its retry.
    DeferQueue,
    /// `bounce-queue`: every ready recipient of the queue bounces.
    BounceQueue,
    /// `skip-mx`: leave this next hop; the recipient is tried at once on the next one.
    SkipMx,
    /// `disable-source-ip` (with `reenable-after=D`, else an hour): this queue stops using
    /// the connection's source IP (its VMTA) for that long; a pool's other members carry on.
    DisableSourceIp(Duration),
}

/// How long `disable-source-ip` lasts without `reenable-after`.
pub const REENABLE_AFTER_DEFAULT: Duration = Duration::from_secs(3600);

/// `reply /regex/ ACTIONS` in an `<smtp-pattern-list>`.
#[derive(Debug, Clone)]
pub struct PatternRule {
    pub regex: regex::Regex,
    pub actions: Vec<PatternAction>,
}

/// `source-ip-max-msg-rate`, `source-ip-max-connect-rate`, `source-ip-max-smtp-out` for one IP.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceIpLimits {
    pub max_msg_rate: Option<Rate>,
    pub max_connect_rate: Option<Rate>,
    pub max_smtp_out: Option<u32>,
}

/// A `<virtual-mta NAME>`: where its connections come from, and its own `<domain>` settings.
#[derive(Debug, Clone, Default)]
pub struct VirtualMta {
    pub name: String,
    /// `smtp-source-host IP HOSTNAME`: bind this address, say this name in EHLO.
    pub source_ip: Option<IpAddr>,
    pub host_name: Option<String>,
    /// `domain-key` lines inside the VMTA: tried before the global ones.
    pub domain_keys: Vec<DomainKey>,
    domains: DomainBlocks,
}

/// `<domain *>` and `<domain NAME>` blocks at one level (global, a VMTA, a pool).
#[derive(Debug, Clone, Default)]
struct DomainBlocks {
    wildcard: DomainOverrides,
    named: HashMap<String, DomainOverrides>,
}

impl DomainBlocks {
    /// `*` first, then each parent from the farthest, then the domain itself.
    fn apply(&self, domain: &str, settings: &mut DomainSettings) {
        self.wildcard.apply(settings);
        for o in suffixes_farthest_first(domain).filter_map(|d| self.named.get(d)) {
            o.apply(settings);
        }
    }
}

/// What an `x-virtual-mta:` header or `default-virtual-mta` may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmtaTarget {
    Vmta(String),
    Pool(String),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host_name: String,
    pub postmaster: Option<String>,
    pub listeners: Vec<SocketAddr>,
    /// Listeners where TLS starts at connect (`<smtp-listener ADDR> immediate-tls yes`).
    pub immediate_tls: Vec<SocketAddr>,
    /// `smtp-server-tls-certificate CERT KEY`: PEM files for inbound TLS.
    pub tls_certificate: Option<TlsCertificate>,
    pub spool_dir: PathBuf,
    /// `spool-sync no` drops the fsync before 250; for benchmarks only.
    pub spool_sync: bool,
    pub spool_segment_bytes: u64,
    pub shards: Option<usize>,
    pub dns_server: Option<SocketAddr>,
    pub total_max_smtp_in: u32,
    /// Limits per source IP, shared by every shard and every VMTA using that address.
    pub source_ip_limits: HashMap<IpAddr, SourceIpLimits>,
    pub smtp_command_timeout: Duration,
    pub smtp_data_timeout: Duration,
    /// `startup-delivery-delay`: after start, mail is accepted but not delivered for this long.
    pub startup_delivery_delay: Duration,
    /// `startup-ramp`: after the delay, connection and rate limits grow from
    /// `STARTUP_RAMP_FLOOR` of their value to all of it over this long.
    pub startup_ramp: Duration,
    sources: Vec<SourceRule>,
    /// `<source {NAME}>` blocks.
    named_sources: HashMap<String, SourcePolicy>,
    /// `<smtp-user NAME>` blocks.
    pub smtp_users: HashMap<String, SmtpUser>,
    /// `<address-list NAME>` blocks (suppression lists).
    pub address_lists: HashMap<String, AddressListConfig>,
    pub feedback_processor: Option<FeedbackProcessor>,
    /// `<bounce-processor>` (same shape; no auto-suppress list).
    pub bounce_processor: Option<FeedbackProcessor>,
    domains: DomainBlocks,
    /// `<domain>` blocks inside `<virtual-mta-pool>` blocks.
    pool_domains: HashMap<String, DomainBlocks>,
    /// `domain-key` lines: global, and per pool (per VMTA: in `VirtualMta`).
    pub domain_keys: Vec<DomainKey>,
    /// `arc-key SELECTOR,DOMAIN,KEYFILE`: the key ARC seals are made with.
    pub arc_key: Option<DomainKey>,
    pub pool_domain_keys: HashMap<String, Vec<DomainKey>>,
    pub vmtas: HashMap<String, VirtualMta>,
    /// `<smtp-pattern-list NAME>` blocks.
    pub pattern_lists: HashMap<String, std::sync::Arc<Vec<PatternRule>>>,
    /// `<bounce-category-patterns>`, tried in order before the built-in rules.
    pub bounce_patterns: std::sync::Arc<Vec<BouncePattern>>,
    /// `<virtual-mta-pool NAME>` → members, used round-robin per connection.
    pub pools: HashMap<String, Vec<String>>,
    pub acct_files: Vec<AcctFile>,
    /// The management API, when `http-mgmt-port` is set.
    pub mgmt: Option<Mgmt>,
    /// Header fields some accounting file records (`header_NAME` in `record-fields`), each
    /// once, in the order first named: what every record carries in `Record::headers`.
    pub acct_headers: Vec<String>,
    pub warnings: Vec<Warning>,
}

/// Where `startup-ramp` starts: this share of every connection and rate limit.
pub const STARTUP_RAMP_FLOOR: f64 = 0.1;

/// Where a process is in its start-up (`startup-delivery-delay`, `startup-ramp`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Startup {
    /// Accepting, not delivering yet; this many ms left.
    Delaying {
        left_ms: u64,
    },
    /// Delivering with limits at this share of their value.
    Ramping {
        share: f64,
    },
    Running,
}

impl Config {
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

    /// The policy for a client address: longest-prefix `<source>` wins; none → defaults.
    /// A named `<source {NAME}>` (the policies of authenticated sessions).
    pub fn named_source(&self, name: &str) -> Option<&SourcePolicy> {
        self.named_sources.get(name)
    }

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
        let mut target = self.domains.wildcard.queue_to.as_ref();
        for o in suffixes_farthest_first(domain).filter_map(|d| self.domains.named.get(d)) {
            target = o.queue_to.as_ref().or(target);
        }
        target.cloned().unwrap_or_else(|| domain.to_string())
    }

    /// Resolves a VMTA or pool name.
    pub fn vmta_target(&self, name: &str) -> Option<VmtaTarget> {
        if self.vmtas.contains_key(name) {
            Some(VmtaTarget::Vmta(name.to_string()))
        } else if self.pools.contains_key(name) {
            Some(VmtaTarget::Pool(name.to_string()))
        } else {
            None
        }
    }
}

/// A file named in the config: a relative path is found next to the config file naming it.
fn relative_to(span: &Span, path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    match Path::new(&*span.file).parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
}

/// `relaxed` or `simple` (RFC 6376 §3.4) as "is relaxed".
fn canon(v: &str, span: &Span) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "relaxed" => Ok(true),
        "simple" => Ok(false),
        _ => Err(ConfigError::at(span, format!("`{v}` is not a canonicalization"), "use relaxed or simple")),
    }
}

/// `domain-key SELECTOR,DOMAIN|*,KEYFILE`; a relative KEYFILE is found next to the config
/// file that names it.
fn domain_key(args: &[String], span: &Span) -> Result<DomainKey, ConfigError> {
    let joined = args.join("");
    let hint = "write `domain-key SELECTOR,DOMAIN,/path/to/key.pem` (DOMAIN may be *)";
    let parts: Vec<&str> = joined.split(',').map(str::trim).collect();
    let [selector, domain, path] = parts.as_slice() else {
        return Err(ConfigError::at(span, format!("`{joined}` is not SELECTOR,DOMAIN,KEYFILE"), hint));
    };
    if selector.is_empty() || domain.is_empty() || path.is_empty() {
        return Err(ConfigError::at(span, format!("`{joined}` has an empty part"), hint));
    }
    let path = relative_to(span, path);
    Ok(DomainKey {
        selector: selector.to_string(),
        domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        path,
        span: span.clone(),
    })
}

/// `a.b.c` → `c`, `b.c`, `a.b.c`: each parent from the farthest, then the domain itself.
/// Slices of `domain`, no allocation: this runs for every message.
fn suffixes_farthest_first(domain: &str) -> impl Iterator<Item = &str> {
    domain.rmatch_indices('.').map(move |(i, _)| &domain[i + 1..]).chain(std::iter::once(domain))
}

/// Accounting columns (`record-fields` may name these), as the engine writes them.
pub const ACCT_FIELDS: &[&str] = &[
    "type",
    "timeLogged",
    "timeQueued",
    "orig",
    "rcpt",
    "orcpt",
    "dsnAction",
    "dsnStatus",
    "dsnDiag",
    "dsnMta",
    "bounceCat",
    "srcType",
    "srcMta",
    "dlvType",
    "dlvSourceIp",
    "dlvDestinationIp",
    "dlvEsmtpAvailable",
    "dlvSize",
    "vmta",
    "jobId",
    "envId",
    "queue",
    "vmtaPool",
    "rcvSmtpUser",
    "dlvTlsProtocol",
    "dlvTlsCipher",
    "authResults",
    "format",
    "feedbackType",
    "userAgent",
    "reportingMta",
    "sourceIp",
];

/// Names sluice accepts but does not implement yet, with the issue that brings them.
const NOT_YET: &[(&str, &str)] = &[("min-free-space", "spool space limits")];

const GLOBAL: &[&str] = &[
    "host-name",
    "postmaster",
    "smtp-listener",
    "spool",
    "spool-sync",
    "spool-segment-size",
    "shards",
    "dns-server",
    "total-max-smtp-in",
    "smtp-command-timeout",
    "smtp-data-timeout",
    "source-ip-max-msg-rate",
    "source-ip-max-connect-rate",
    "source-ip-max-smtp-out",
    "domain-key",
    "arc-key",
    "smtp-server-tls-certificate",
    "http-mgmt-port",
    "http-access",
    "http-api-key",
    "startup-delivery-delay",
    "startup-ramp",
];
const SOURCE: &[&str] = &[
    "always-allow-relaying",
    "smtp-service",
    "max-message-size",
    "max-rcpt-per-message",
    "process-x-virtual-mta",
    "default-virtual-mta",
    "add-received-header",
    "hide-message-source",
    "retain-x-virtual-mta",
    "reject-invalid-virtual-mta",
    "generate-bounces",
    "allow-auth",
    "allow-starttls",
    "require-auth",
    "require-starttls-before-auth",
    "smtp-max-auth-failure-rate",
    "allowed-mail-from-domain",
    "allowed-virtual-mta",
    "check-spf-inbound",
    "check-dkim-inbound",
    "check-dmarc-inbound",
    "check-arc-inbound",
    "arc-sign",
    "suppression-lists",
    "process-x-job",
    "bare-lf",
    "long-lines",
    "jobid-header",
    "retain-x-job",
];
const DOMAIN: &[&str] = &[
    "use-starttls",
    "downgrade-8bit",
    "require-starttls",
    "dkim-sign",
    "dkim-headers",
    "dkim-header-canon",
    "dkim-body-canon",
    "dkim-identity",
    "dkim-expire-after",
    "queue-priority",
    "disable-mx-rollup",
    "backoff-to-normal-after-delivery",
    "queue-to",
    "adaptive-rate",
    "smtp-pattern-list",
    "backoff-max-msg-rate",
    "backoff-max-smtp-out",
    "backoff-retry-after",
    "backoff-to-normal-after",
    "max-msg-rate",
    "max-connect-rate",
    "max-smtp-out",
    "max-msg-per-connection",
    "max-rcpt-per-message",
    "retry-after",
    "bounce-after",
    "smtp-hosts",
    "route",
];
const BLOCKS: &[&str] = &[
    "source",
    "domain",
    "acct-file",
    "spool",
    "virtual-mta",
    "virtual-mta-pool",
    "bounce-category-patterns",
    "smtp-pattern-list",
    "smtp-user",
    "smtp-listener",
    "address-list",
    "feedback-loop-processor",
    "bounce-processor",
];

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + usize::from(ca != *cb));
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn nearest_hint(name: &str, known: &[&str]) -> String {
    let all = known.iter().copied().chain(NOT_YET.iter().map(|(n, _)| *n));
    match all.map(|k| (distance(name, k), k)).min() {
        Some((d, k)) if d <= 3 || k.contains(name) => format!("did you mean `{k}`?"),
        _ => "see reference/powermta-compat.md for the directives sluice reads".into(),
    }
}

/// A directive inside a block: its name, its values, where it is.
type DirectiveRef<'a> = (&'a str, &'a [String], &'a Span);

struct Builder {
    config: Config,
    /// `smtp-pattern-list` names used in `<domain>` blocks, checked once all is read.
    pattern_refs: Vec<(String, Span)>,
    /// VMTA names used (`default-virtual-mta`, pool members), checked once all is read.
    vmta_refs: Vec<(String, Span)>,
    /// Named sources used by `<smtp-user>` (`source {NAME}`), checked once all is read.
    source_refs: Vec<(String, Span)>,
    /// `arc-sign yes` lines: they need an `arc-key`.
    arc_sign_refs: Vec<Span>,
    /// `suppression-lists` names, checked once all is read.
    list_refs: Vec<(String, Span)>,
    /// `http-access` and `http-api-key`, applied once `http-mgmt-port` is known.
    mgmt_access: Vec<(Cidr, Access)>,
    mgmt_key: Option<String>,
}

fn one_arg<'a>(name: &str, args: &'a [String], span: &Span) -> Result<&'a str, ConfigError> {
    match args {
        [v] => Ok(v.as_str()),
        _ => Err(ConfigError::at(
            span,
            format!("`{name}` takes exactly one value, got {}", args.len()),
            format!("write `{name} VALUE`"),
        )),
    }
}

fn value<T>(span: &Span, parsed: Result<T, String>) -> Result<T, ConfigError> {
    parsed.map_err(|m| ConfigError::at(span, m, ""))
}

fn count(v: &str) -> Result<u32, String> {
    v.parse().map_err(|_| format!("`{v}` is not a whole number"))
}

impl Builder {
    fn not_yet(&mut self, name: &str, span: &Span) -> bool {
        match NOT_YET.iter().find(|(n, _)| *n == name) {
            Some((_, what)) => {
                self.config.warnings.push(Warning {
                    span: span.clone(),
                    message: format!("`{name}` is not supported yet ({what}); ignored"),
                });
                true
            }
            None => false,
        }
    }

    fn unknown(&mut self, name: &str, span: &Span, known: &[&str], context: &str) -> Result<(), ConfigError> {
        if self.not_yet(name, span) {
            return Ok(());
        }
        Err(ConfigError::at(span, format!("unknown directive `{name}` in {context}"), nearest_hint(name, known)))
    }

    /// The directives of a block that holds no blocks: a nested block is reported (an
    /// error, or a warning for known PowerMTA blocks) and skipped.
    fn directives<'a>(&mut self, children: &'a [Node], context: &str) -> Result<Vec<DirectiveRef<'a>>, ConfigError> {
        let mut out = Vec::with_capacity(children.len());
        for child in children {
            match child {
                Node::Directive { name, args, span } => out.push((name.as_str(), args.as_slice(), span)),
                Node::Block { name, span, .. } => self.unknown(name, span, &[], context)?,
            }
        }
        Ok(out)
    }

    fn global(&mut self, nodes: &[Node]) -> Result<(), ConfigError> {
        for node in nodes {
            match node {
                Node::Directive { name, args, span } => self.global_directive(name, args, span)?,
                Node::Block { name, arg, children, span } => self.block(name, arg.as_deref(), children, span)?,
            }
        }
        Ok(())
    }

    fn global_directive(&mut self, name: &str, args: &[String], span: &Span) -> Result<(), ConfigError> {
        let c = &mut self.config;
        match name {
            "host-name" => c.host_name = one_arg(name, args, span)?.to_string(),
            "postmaster" => c.postmaster = Some(one_arg(name, args, span)?.to_string()),
            "domain-key" => c.domain_keys.push(domain_key(args, span)?),
            "arc-key" => {
                let key = domain_key(args, span)?;
                if key.domain == "*" {
                    return Err(ConfigError::at(
                        span,
                        "an ARC key needs its domain",
                        "write `arc-key s1,relay.example.com,/path/key.pem`",
                    ));
                }
                c.arc_key = Some(key);
            }
            "smtp-server-tls-certificate" => {
                let [cert, key] = args else {
                    return Err(ConfigError::at(
                        span,
                        "`smtp-server-tls-certificate` takes a certificate file and a key file",
                        "write `smtp-server-tls-certificate /etc/sluice/cert.pem /etc/sluice/key.pem`",
                    ));
                };
                c.tls_certificate = Some(TlsCertificate {
                    cert: relative_to(span, cert),
                    key: relative_to(span, key),
                    span: span.clone(),
                });
            }
            "smtp-listener" => c.listeners.push(value(span, units::parse_listen(one_arg(name, args, span)?))?),
            "http-mgmt-port" => {
                let v = one_arg(name, args, span)?;
                let listen = match v.parse::<u16>() {
                    Ok(port) => SocketAddr::from(([0, 0, 0, 0], port)),
                    Err(_) => v.parse::<SocketAddr>().map_err(|_| {
                        ConfigError::at(
                            span,
                            format!("`{v}` is not a port or IP:PORT"),
                            "write e.g. 8080 or 127.0.0.1:8080",
                        )
                    })?,
                };
                c.mgmt.get_or_insert_with(|| Mgmt { listen, access: Vec::new(), api_key: None }).listen = listen;
            }
            "http-access" => {
                let [cidr, level] = args else {
                    return Err(ConfigError::at(
                        span,
                        "`http-access` takes an address (or CIDR) and a level",
                        "write e.g. `http-access 10.0.0.0/8 monitor` (levels: none, monitor, operator, admin)",
                    ));
                };
                let cidr = value(span, units::parse_cidr(cidr))?;
                let level = match level.to_ascii_lowercase().as_str() {
                    "none" => Access::None,
                    "monitor" => Access::Monitor,
                    "operator" => Access::Operator,
                    "admin" => Access::Admin,
                    other => {
                        return Err(ConfigError::at(
                            span,
                            format!("unknown access level `{other}`"),
                            "the levels are none, monitor, operator and admin",
                        ))
                    }
                };
                self.mgmt_access.push((cidr, level));
            }
            "http-api-key" => {
                let key = one_arg(name, args, span)?;
                if key.len() < 16 {
                    return Err(ConfigError::at(
                        span,
                        "`http-api-key` is too short",
                        "use at least 16 random characters, e.g. from `openssl rand -hex 24`",
                    ));
                }
                self.mgmt_key = Some(key.to_string());
            }
            "spool" => c.spool_dir = PathBuf::from(one_arg(name, args, span)?),
            "spool-sync" => c.spool_sync = value(span, units::parse_bool(one_arg(name, args, span)?))?,
            "spool-segment-size" => {
                let size = value(span, units::parse_size(one_arg(name, args, span)?))?;
                if !(1 << 20..=1 << 32).contains(&size) {
                    return Err(ConfigError::at(
                        span,
                        "spool-segment-size must be between 1M and 4G",
                        "the default 64M suits most hosts",
                    ));
                }
                c.spool_segment_bytes = size;
            }
            "shards" => {
                let n = value(span, count(one_arg(name, args, span)?))?;
                if !(1..=1024).contains(&n) {
                    return Err(ConfigError::at(
                        span,
                        "shards must be between 1 and 1024",
                        "leave it out for one shard per CPU",
                    ));
                }
                c.shards = Some(n as usize);
            }
            "dns-server" => {
                let v = one_arg(name, args, span)?;
                let addr = v
                    .parse::<SocketAddr>()
                    .or_else(|_| v.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                    ConfigError::at(span, format!("`{v}` is not IP or IP:PORT"), "write e.g. 127.0.0.1:5353")
                })?;
                c.dns_server = Some(addr);
            }
            "total-max-smtp-in" => c.total_max_smtp_in = value(span, count(one_arg(name, args, span)?))?,
            "startup-delivery-delay" => {
                c.startup_delivery_delay = value(span, units::parse_duration(one_arg(name, args, span)?))?
            }
            "startup-ramp" => c.startup_ramp = value(span, units::parse_duration(one_arg(name, args, span)?))?,
            "source-ip-max-msg-rate" | "source-ip-max-connect-rate" | "source-ip-max-smtp-out" => {
                let [ip, limit] = args else {
                    return Err(ConfigError::at(
                        span,
                        format!("`{name}` takes an IP address and a limit"),
                        format!("write `{name} 192.0.2.10 600/m`"),
                    ));
                };
                let ip: IpAddr = ip.parse().map_err(|_| {
                    ConfigError::at(span, format!("`{ip}` is not an IP address"), "write e.g. 192.0.2.10")
                })?;
                let entry = c.source_ip_limits.entry(ip).or_default();
                match name {
                    "source-ip-max-msg-rate" => entry.max_msg_rate = Some(value(span, units::parse_rate(limit))?),
                    "source-ip-max-connect-rate" => {
                        entry.max_connect_rate = Some(value(span, units::parse_rate(limit))?)
                    }
                    _ => entry.max_smtp_out = Some(value(span, count(limit))?),
                }
            }
            "smtp-command-timeout" => {
                c.smtp_command_timeout = value(span, units::parse_duration(one_arg(name, args, span)?))?
            }
            "smtp-data-timeout" => {
                c.smtp_data_timeout = value(span, units::parse_duration(one_arg(name, args, span)?))?
            }
            _ => return self.unknown(name, span, GLOBAL, "the global section"),
        }
        Ok(())
    }

    fn block(&mut self, name: &str, arg: Option<&str>, children: &[Node], span: &Span) -> Result<(), ConfigError> {
        match name {
            "source" => self.source(arg, children, span),
            "domain" => {
                let mut blocks = std::mem::take(&mut self.config.domains);
                let result = self.domain_block(arg, children, span, &mut blocks);
                self.config.domains = blocks;
                result
            }
            "acct-file" => self.acct_file(arg, children, span),
            "virtual-mta" => self.virtual_mta(arg, children, span),
            "virtual-mta-pool" => self.vmta_pool(arg, children, span),
            "smtp-user" => self.smtp_user(arg, children, span),
            "address-list" => self.address_list(arg, children, span),
            "feedback-loop-processor" => {
                let p = self.report_processor("<feedback-loop-processor>", children, span)?;
                self.config.feedback_processor = Some(p);
                Ok(())
            }
            "bounce-processor" => {
                let p = self.report_processor("<bounce-processor>", children, span)?;
                self.config.bounce_processor = Some(p);
                Ok(())
            }
            "smtp-listener" => {
                let addr = arg.ok_or_else(|| {
                    ConfigError::at(span, "`<smtp-listener>` needs an address", "write `<smtp-listener 0/0:465>`")
                })?;
                let addr = value(span, units::parse_listen(addr))?;
                self.config.listeners.push(addr);
                for (d, args, dspan) in self.directives(children, "<smtp-listener>")? {
                    match d {
                        "immediate-tls" => {
                            if value(dspan, units::parse_bool(one_arg(d, args, dspan)?))? {
                                self.config.immediate_tls.push(addr);
                            }
                        }
                        _ => self.unknown(d, dspan, &["immediate-tls"], "<smtp-listener>")?,
                    }
                }
                Ok(())
            }
            "bounce-category-patterns" => self.bounce_patterns(children),
            "smtp-pattern-list" => self.pattern_list(arg, children, span),
            "spool" => {
                let dir = arg.ok_or_else(|| {
                    ConfigError::at(span, "`<spool>` needs a directory", "write `<spool /var/spool/sluice>`")
                })?;
                self.config.spool_dir = PathBuf::from(dir);
                for child in children {
                    match child {
                        Node::Directive { name, span, .. } => self.unknown(name, span, &[], "<spool>")?,
                        Node::Block { name, span, .. } => self.unknown(name, span, &[], "<spool>")?,
                    }
                }
                Ok(())
            }
            _ => self.unknown(name, span, BLOCKS, "the global section"),
        }
    }

    fn source(&mut self, arg: Option<&str>, children: &[Node], span: &Span) -> Result<(), ConfigError> {
        let arg = arg.ok_or_else(|| {
            ConfigError::at(span, "`<source>` needs a CIDR", "write `<source 10.0.0.0/8>` or `<source 0/0>`")
        })?;
        // `{auth}` and other names: policies that authenticated sessions take.
        let named = arg.starts_with('{').then(|| arg.to_string());
        let cidr = match named {
            Some(_) => None,
            None => Some(value(span, units::parse_cidr(arg))?),
        };
        let mut policy = SourcePolicy::default();
        for (name, args, span) in self.directives(children, "<source>")? {
            match name {
                "always-allow-relaying" => {
                    policy.always_allow_relaying = value(span, units::parse_bool(one_arg(name, args, span)?))?
                }
                "smtp-service" => policy.smtp_service = value(span, units::parse_bool(one_arg(name, args, span)?))?,
                "max-message-size" => {
                    policy.max_message_size = value(span, units::parse_size(one_arg(name, args, span)?))?
                }
                "max-rcpt-per-message" => policy.max_rcpt_per_message = value(span, count(one_arg(name, args, span)?))?,
                "process-x-virtual-mta" => {
                    policy.process_x_virtual_mta = value(span, units::parse_bool(one_arg(name, args, span)?))?
                }
                "default-virtual-mta" => {
                    let target = one_arg(name, args, span)?.to_string();
                    self.vmta_refs.push((target.clone(), span.clone()));
                    policy.default_virtual_mta = Some(target);
                }
                "retain-x-virtual-mta" => {
                    policy.retain_x_virtual_mta = value(span, units::parse_bool(one_arg(name, args, span)?))?
                }
                "reject-invalid-virtual-mta" => {
                    policy.reject_invalid_virtual_mta = value(span, units::parse_bool(one_arg(name, args, span)?))?
                }
                "add-received-header" => {
                    policy.add_received_header = value(span, units::parse_bool(one_arg(name, args, span)?))?
                }
                "hide-message-source" => {
                    policy.hide_message_source = value(span, units::parse_bool(one_arg(name, args, span)?))?
                }
                "generate-bounces" => {
                    policy.generate_bounces = value(span, units::parse_bool(one_arg(name, args, span)?))?
                }
                "allow-auth" => policy.allow_auth = value(span, units::parse_bool(one_arg(name, args, span)?))?,
                "allow-starttls" => policy.allow_starttls = value(span, units::parse_bool(one_arg(name, args, span)?))?,
                "require-auth" => policy.require_auth = value(span, units::parse_bool(one_arg(name, args, span)?))?,
                "require-starttls-before-auth" => {
                    policy.require_starttls_before_auth = value(span, units::parse_bool(one_arg(name, args, span)?))?
                }
                "smtp-max-auth-failure-rate" => {
                    policy.max_auth_failure_rate = value(span, units::parse_rate(one_arg(name, args, span)?))?
                }
                "allowed-mail-from-domain" | "allowed-virtual-mta" => {
                    self.restriction(name, args, span, &mut policy.restrictions)
                }
                "check-spf-inbound" => policy.check_spf = value(span, units::parse_bool(one_arg(name, args, span)?))?,
                "check-dkim-inbound" => policy.check_dkim = value(span, units::parse_bool(one_arg(name, args, span)?))?,
                "check-dmarc-inbound" => {
                    policy.check_dmarc = value(span, units::parse_bool(one_arg(name, args, span)?))?
                }
                "check-arc-inbound" => policy.check_arc = value(span, units::parse_bool(one_arg(name, args, span)?))?,
                "process-x-job" => policy.process_x_job = value(span, units::parse_bool(one_arg(name, args, span)?))?,
                "jobid-header" => policy.jobid_header = one_arg(name, args, span)?.to_ascii_lowercase(),
                "retain-x-job" => policy.retain_x_job = value(span, units::parse_bool(one_arg(name, args, span)?))?,
                "bare-lf" => {
                    let choices = [("normalize", BareLf::Normalize), ("reject", BareLf::Reject)];
                    policy.bare_lf = value(span, choice(name, one_arg(name, args, span)?, &choices))?
                }
                "long-lines" => {
                    let choices = [("encode", LongLines::Encode), ("reject", LongLines::Reject)];
                    policy.long_lines = value(span, choice(name, one_arg(name, args, span)?, &choices))?
                }
                "suppression-lists" => {
                    for list in args.join(",").split(',').map(str::trim).filter(|l| !l.is_empty()) {
                        self.list_refs.push((list.to_string(), span.clone()));
                        policy.suppression_lists.push(list.to_string());
                    }
                }
                "arc-sign" => {
                    policy.arc_sign = value(span, units::parse_bool(one_arg(name, args, span)?))?;
                    if policy.arc_sign {
                        self.arc_sign_refs.push(span.clone());
                    }
                }
                _ => self.unknown(name, span, SOURCE, "<source>")?,
            }
        }
        match (cidr, named) {
            (Some(cidr), _) => {
                self.config.sources.retain(|r| r.cidr != cidr);
                self.config.sources.push(SourceRule { cidr, policy });
            }
            (None, Some(name)) => {
                self.config.named_sources.insert(name, policy);
            }
            (None, None) => unreachable!("a source is a CIDR or a name"),
        }
        Ok(())
    }

    fn address_list(&mut self, arg: Option<&str>, children: &[Node], span: &Span) -> Result<(), ConfigError> {
        let name = arg.ok_or_else(|| {
            ConfigError::at(span, "`<address-list>` needs a name", "write `<address-list suppress1>`")
        })?;
        let known = ["address", "address-file", "domain", "address-hash-file", "address-hmac-file"];
        let mut entries = Vec::new();
        for (d, args, dspan) in self.directives(children, "<address-list>")? {
            let entry = match d {
                "address" => {
                    let a = one_arg(d, args, dspan)?;
                    match a.strip_prefix('/').and_then(|r| r.strip_suffix('/')) {
                        Some(re) => {
                            regex::Regex::new(re).map_err(|e| {
                                ConfigError::at(dspan, format!("bad regex `{a}`: {e}"), "write `address /^bounce-.*@/`")
                            })?;
                            ListEntry::Regex(re.to_string())
                        }
                        None => ListEntry::Address(a.to_ascii_lowercase()),
                    }
                }
                "address-file" => ListEntry::File(relative_to(dspan, one_arg(d, args, dspan)?)),
                "domain" => ListEntry::Domain(one_arg(d, args, dspan)?.trim_end_matches('.').to_ascii_lowercase()),
                "address-hash-file" => ListEntry::HashFile(relative_to(dspan, one_arg(d, args, dspan)?)),
                "address-hmac-file" => {
                    let [file, key] = args else {
                        return Err(ConfigError::at(
                            dspan,
                            "`address-hmac-file` takes a file and a key",
                            "write `address-hmac-file /etc/sluice/hmac.txt SECRETKEY`",
                        ));
                    };
                    ListEntry::HmacFile(relative_to(dspan, file), key.clone())
                }
                _ => {
                    self.unknown(d, dspan, &known, "<address-list>")?;
                    continue;
                }
            };
            entries.push((entry, dspan.clone()));
        }
        self.config.address_lists.insert(name.to_string(), AddressListConfig { name: name.to_string(), entries });
        Ok(())
    }

    fn report_processor(
        &mut self,
        context: &str,
        children: &[Node],
        span: &Span,
    ) -> Result<FeedbackProcessor, ConfigError> {
        const ANON: &str = "{report-processor}";
        let mut deliver_unmatched = false;
        let mut auto_suppress = None;
        let mut has_list = false;
        for child in children {
            match child {
                Node::Directive { name, args, span } if name == "deliver-unmatched-email" => {
                    deliver_unmatched = value(span, units::parse_bool(one_arg(name, args, span)?))?
                }
                Node::Directive { name, args, span } if name == "auto-suppress-list" => {
                    let list = one_arg(name, args, span)?.to_string();
                    self.list_refs.push((list.clone(), span.clone()));
                    auto_suppress = Some(list);
                }
                Node::Directive { name, span, .. } => {
                    self.unknown(name, span, &["deliver-unmatched-email", "auto-suppress-list"], context)?
                }
                Node::Block { name, children, span, .. } if name == "address-list" => {
                    self.address_list(Some(ANON), children, span)?;
                    has_list = true;
                }
                Node::Block { name, span, .. } => self.unknown(name, span, &["address-list"], context)?,
            }
        }
        if !has_list {
            return Err(ConfigError::at(
                span,
                format!("`{context}` needs an `<address-list>` of the addresses reports come to"),
                "add `<address-list> address fbl@example.com </address-list>` inside it",
            ));
        }
        let addresses = self.config.address_lists.remove(ANON).expect("parsed above");
        Ok(FeedbackProcessor { addresses, deliver_unmatched, auto_suppress })
    }

    /// `allowed-mail-from-domain D[,D...]` / `allowed-virtual-mta V[,V...]`, repeatable.
    fn restriction(&mut self, name: &str, args: &[String], span: &Span, into: &mut SenderRestrictions) {
        let items = args.join(",");
        let items = items.split(',').map(str::trim).filter(|i| !i.is_empty());
        if name == "allowed-mail-from-domain" {
            into.mail_from_domains.extend(items.map(|d| d.trim_end_matches('.').to_ascii_lowercase()));
        } else {
            for v in items {
                self.vmta_refs.push((v.to_string(), span.clone()));
                into.virtual_mtas.push(v.to_string());
            }
        }
    }

    fn smtp_user(&mut self, arg: Option<&str>, children: &[Node], span: &Span) -> Result<(), ConfigError> {
        let name =
            arg.ok_or_else(|| ConfigError::at(span, "`<smtp-user>` needs a name", "write `<smtp-user injector1>`"))?;
        let mut user = SmtpUser {
            name: name.to_string(),
            password: String::new(),
            source: "{auth}".into(),
            restrictions: SenderRestrictions::default(),
            span: span.clone(),
        };
        for (d, args, dspan) in self.directives(children, "<smtp-user>")? {
            match d {
                "password" => user.password = one_arg(d, args, dspan)?.to_string(),
                "source" => user.source = one_arg(d, args, dspan)?.to_string(),
                "allowed-mail-from-domain" | "allowed-virtual-mta" => {
                    self.restriction(d, args, dspan, &mut user.restrictions)
                }
                _ => self.unknown(
                    d,
                    dspan,
                    &["password", "source", "allowed-mail-from-domain", "allowed-virtual-mta"],
                    "<smtp-user>",
                )?,
            }
        }
        if user.password.is_empty() {
            return Err(ConfigError::at(
                span,
                format!("smtp-user `{name}` has no password"),
                "add `password SECRET` (or a $argon2id$/$6$ hash)",
            ));
        }
        self.source_refs.push((user.source.clone(), span.clone()));
        self.config.smtp_users.insert(name.to_string(), user);
        Ok(())
    }

    fn domain(&mut self, children: &[Node]) -> Result<DomainOverrides, ConfigError> {
        let mut o = DomainOverrides::default();
        for (name, args, span) in self.directives(children, "<domain>")? {
            match name {
                "max-smtp-out" => {
                    let n = value(span, count(one_arg(name, args, span)?))?;
                    if n == 0 {
                        return Err(ConfigError::at(span, "max-smtp-out 0 would never deliver", "use at least 1"));
                    }
                    o.max_smtp_out = Some(n);
                }
                "max-msg-per-connection" => {
                    o.max_msg_per_connection = Some(value(span, count(one_arg(name, args, span)?))?)
                }
                "max-rcpt-per-message" => {
                    o.max_rcpt_per_message = Some(value(span, count(one_arg(name, args, span)?))?)
                }
                "retry-after" => {
                    let list = one_arg(name, args, span)?;
                    let durations: Result<Vec<_>, _> =
                        list.split(',').map(|d| units::parse_duration(d.trim())).collect();
                    o.retry_after = Some(value(span, durations)?);
                }
                "bounce-after" => {
                    o.bounce_after = Some(value(span, units::parse_duration(one_arg(name, args, span)?))?)
                }
                "backoff-to-normal-after-delivery" => {
                    o.backoff_to_normal_after_delivery =
                        Some(value(span, units::parse_bool(one_arg(name, args, span)?))?)
                }
                "queue-to" => o.queue_to = Some(one_arg(name, args, span)?.to_ascii_lowercase()),
                "adaptive-rate" => o.adaptive_rate = Some(value(span, units::parse_bool(one_arg(name, args, span)?))?),
                "queue-priority" => {
                    let n = value(span, count(one_arg(name, args, span)?))?;
                    if n > 100 {
                        return Err(ConfigError::at(
                            span,
                            format!("queue-priority {n} is out of range"),
                            "use 0 to 100",
                        ));
                    }
                    o.queue_priority = Some(n as u8);
                }
                "disable-mx-rollup" => o.mx_rollup = Some(!value(span, units::parse_bool(one_arg(name, args, span)?))?),
                "dkim-sign" => o.dkim_sign = Some(value(span, units::parse_bool(one_arg(name, args, span)?))?),
                "use-starttls" => o.use_starttls = Some(value(span, units::parse_bool(one_arg(name, args, span)?))?),
                "require-starttls" => {
                    o.require_starttls = Some(value(span, units::parse_bool(one_arg(name, args, span)?))?)
                }
                "downgrade-8bit" => {
                    let choices =
                        [("quoted-printable", Downgrade8bit::QuotedPrintable), ("bounce", Downgrade8bit::Bounce)];
                    o.downgrade_8bit = Some(value(span, choice(name, one_arg(name, args, span)?, &choices))?)
                }
                "dkim-headers" => {
                    let list: Vec<String> = args
                        .join(",")
                        .split([',', ':'])
                        .map(str::trim)
                        .filter(|h| !h.is_empty())
                        .map(str::to_string)
                        .collect();
                    if !list.iter().any(|h| h.eq_ignore_ascii_case("from")) {
                        return Err(ConfigError::at(
                            span,
                            "dkim-headers must include From (RFC 6376 §5.4)",
                            "write e.g. `dkim-headers From,To,Subject,Date,Message-ID`",
                        ));
                    }
                    o.dkim_headers = Some(list);
                }
                "dkim-header-canon" => o.dkim_header_relaxed = Some(canon(one_arg(name, args, span)?, span)?),
                "dkim-body-canon" => o.dkim_body_relaxed = Some(canon(one_arg(name, args, span)?, span)?),
                "dkim-identity" => o.dkim_identity = Some(one_arg(name, args, span)?.to_string()),
                "dkim-expire-after" => {
                    o.dkim_expire_after = Some(value(span, units::parse_duration(one_arg(name, args, span)?))?)
                }
                "smtp-pattern-list" => {
                    let list = one_arg(name, args, span)?.to_string();
                    self.pattern_refs.push((list.clone(), span.clone()));
                    o.pattern_list = Some(list);
                }
                "backoff-max-msg-rate" => {
                    o.backoff_max_msg_rate = Some(value(span, units::parse_rate(one_arg(name, args, span)?))?)
                }
                "backoff-max-smtp-out" => {
                    o.backoff_max_smtp_out = Some(value(span, count(one_arg(name, args, span)?))?)
                }
                "backoff-retry-after" => {
                    let list = one_arg(name, args, span)?;
                    let durations: Result<Vec<_>, _> =
                        list.split(',').map(|d| units::parse_duration(d.trim())).collect();
                    o.backoff_retry_after = Some(value(span, durations)?);
                }
                "backoff-to-normal-after" => {
                    o.backoff_to_normal_after = Some(value(span, units::parse_duration(one_arg(name, args, span)?))?)
                }
                "max-msg-rate" => o.max_msg_rate = Some(value(span, units::parse_rate(one_arg(name, args, span)?))?),
                "max-connect-rate" => {
                    o.max_connect_rate = Some(value(span, units::parse_rate(one_arg(name, args, span)?))?)
                }
                "smtp-hosts" | "route" => o.smtp_hosts = Some(value(span, units::parse_smtp_hosts(&args.join("")))?),
                _ => self.unknown(name, span, DOMAIN, "<domain>")?,
            }
        }
        Ok(o)
    }

    /// A `<domain NAME|*>` block into the blocks of its level.
    fn domain_block(
        &mut self,
        arg: Option<&str>,
        children: &[Node],
        span: &Span,
        into: &mut DomainBlocks,
    ) -> Result<(), ConfigError> {
        let domain = arg.ok_or_else(|| {
            ConfigError::at(span, "`<domain>` needs a name", "write `<domain example.com>` or `<domain *>`")
        })?;
        let overrides = self.domain(children)?;
        if domain == "*" {
            into.wildcard = overrides;
        } else {
            into.named.insert(domain.to_ascii_lowercase(), overrides);
        }
        Ok(())
    }

    fn virtual_mta(&mut self, arg: Option<&str>, children: &[Node], span: &Span) -> Result<(), ConfigError> {
        let name =
            arg.ok_or_else(|| ConfigError::at(span, "`<virtual-mta>` needs a name", "write `<virtual-mta mta1>`"))?;
        let mut vmta = VirtualMta { name: name.to_string(), ..Default::default() };
        for child in children {
            match child {
                Node::Directive { name: d, args, span } if d == "smtp-source-host" => {
                    let [ip, host] = args.as_slice() else {
                        return Err(ConfigError::at(
                            span,
                            "`smtp-source-host` takes an IP address and a host name",
                            "write `smtp-source-host 192.0.2.10 mta1.example.com`",
                        ));
                    };
                    let parsed = ip.parse().map_err(|_| {
                        ConfigError::at(span, format!("`{ip}` is not an IP address"), "write e.g. 192.0.2.10")
                    })?;
                    vmta.source_ip = Some(parsed);
                    vmta.host_name = Some(host.clone());
                }
                Node::Directive { name: d, args, span } if d == "domain-key" => {
                    vmta.domain_keys.push(domain_key(args, span)?)
                }
                Node::Directive { name: d, span, .. } => {
                    self.unknown(d, span, &["smtp-source-host", "domain-key"], "<virtual-mta>")?
                }
                Node::Block { name: b, arg, children, span } if b == "domain" => {
                    self.domain_block(arg.as_deref(), children, span, &mut vmta.domains)?
                }
                Node::Block { name: b, span, .. } => self.unknown(b, span, &["domain"], "<virtual-mta>")?,
            }
        }
        if self.config.pools.contains_key(name) || self.config.vmtas.insert(name.to_string(), vmta).is_some() {
            return Err(ConfigError::at(
                span,
                format!("`{name}` is defined twice"),
                "give each virtual MTA and pool its own name",
            ));
        }
        Ok(())
    }

    fn vmta_pool(&mut self, arg: Option<&str>, children: &[Node], span: &Span) -> Result<(), ConfigError> {
        let name = arg.ok_or_else(|| {
            ConfigError::at(span, "`<virtual-mta-pool>` needs a name", "write `<virtual-mta-pool pool1>`")
        })?;
        let mut members = Vec::new();
        let mut domains = DomainBlocks::default();
        let mut keys = Vec::new();
        for child in children {
            match child {
                Node::Directive { name: d, args, span } if d == "virtual-mta" => {
                    let member = one_arg(d, args, span)?.to_string();
                    self.vmta_refs.push((format!("\0{member}"), span.clone()));
                    members.push(member);
                }
                Node::Directive { name: d, args, span } if d == "domain-key" => keys.push(domain_key(args, span)?),
                Node::Directive { name: d, span, .. } => {
                    self.unknown(d, span, &["virtual-mta", "domain-key"], "<virtual-mta-pool>")?
                }
                Node::Block { name: b, arg, children, span } if b == "domain" => {
                    self.domain_block(arg.as_deref(), children, span, &mut domains)?
                }
                Node::Block { name: b, span, .. } => self.unknown(b, span, &["domain"], "<virtual-mta-pool>")?,
            }
        }
        self.config.pool_domains.insert(name.to_string(), domains);
        self.config.pool_domain_keys.insert(name.to_string(), keys);
        if members.is_empty() {
            return Err(ConfigError::at(span, format!("pool `{name}` has no members"), "add `virtual-mta NAME` lines"));
        }
        if self.config.vmtas.contains_key(name) || self.config.pools.insert(name.to_string(), members).is_some() {
            return Err(ConfigError::at(
                span,
                format!("`{name}` is defined twice"),
                "give each virtual MTA and pool its own name",
            ));
        }
        Ok(())
    }

    /// `reply /regex/ action[,action...]` lines.
    fn pattern_list(&mut self, arg: Option<&str>, children: &[Node], span: &Span) -> Result<(), ConfigError> {
        let name = arg.ok_or_else(|| {
            ConfigError::at(span, "`<smtp-pattern-list>` needs a name", "write `<smtp-pattern-list errors>`")
        })?;
        let syntax = "write `reply /regex/ mode=backoff,backoff-to-normal-after=30m`";
        let mut rules = Vec::new();
        for (directive, args, span) in self.directives(children, "<smtp-pattern-list>")? {
            if directive != "reply" {
                self.unknown(directive, span, &["reply"], "<smtp-pattern-list>")?;
                continue;
            }
            let [pattern, actions @ ..] = args else {
                return Err(ConfigError::at(span, "`reply` needs a /regex/ and actions", syntax));
            };
            let body = pattern
                .strip_prefix('/')
                .and_then(|p| p.strip_suffix('/'))
                .ok_or_else(|| ConfigError::at(span, format!("`{pattern}` is not a /regex/"), syntax))?;
            let regex = regex::Regex::new(body)
                .map_err(|e| ConfigError::at(span, format!("bad regex `{pattern}`: {e}"), syntax))?;
            let mut parsed = Vec::new();
            let mut to_normal = None;
            let mut backoff = false;
            let mut disable = false;
            let mut reenable = None;
            for action in actions.join(",").split(',').map(str::trim).filter(|a| !a.is_empty()) {
                match action.split_once('=') {
                    Some(("mode", "backoff")) => backoff = true,
                    Some(("mode", "normal")) => parsed.push(PatternAction::Normal),
                    Some(("backoff-to-normal-after", d)) => to_normal = Some(value(span, units::parse_duration(d))?),
                    None if action == "bounce-rcpt" => parsed.push(PatternAction::BounceRcpt),
                    None if action == "defer-queue" => parsed.push(PatternAction::DeferQueue),
                    None if action == "bounce-queue" => parsed.push(PatternAction::BounceQueue),
                    None if action == "skip-mx" => parsed.push(PatternAction::SkipMx),
                    None if action == "disable-source-ip" => disable = true,
                    Some(("reenable-after", d)) => reenable = Some(value(span, units::parse_duration(d))?),
                    _ => {
                        return Err(ConfigError::at(
                            span,
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
                return Err(ConfigError::at(
                    span,
                    "`reenable-after` without `disable-source-ip`",
                    "write `disable-source-ip,reenable-after=30m`",
                ));
            }
            rules.push(PatternRule { regex, actions: parsed });
        }
        self.config.pattern_lists.insert(name.to_string(), std::sync::Arc::new(rules));
        Ok(())
    }

    /// `/regex/ category` lines (`/regex/i` for case-insensitive).
    fn bounce_patterns(&mut self, children: &[Node]) -> Result<(), ConfigError> {
        let mut patterns = Vec::new();
        for (pattern, args, span) in self.directives(children, "<bounce-category-patterns>")? {
            let syntax = "write `/regex/ category`, e.g. `/mailbox.*full/ quota-issues`";
            let (body, insensitive) = match pattern.strip_prefix('/') {
                Some(rest) if rest.ends_with("/i") => (&rest[..rest.len() - 2], true),
                Some(rest) if rest.ends_with('/') => (&rest[..rest.len() - 1], false),
                _ => return Err(ConfigError::at(span, format!("`{pattern}` is not a /regex/"), syntax)),
            };
            let [category] = args else {
                return Err(ConfigError::at(span, "a pattern takes one category", syntax));
            };
            let Some(category) = BOUNCE_CATEGORIES.iter().find(|c| **c == category.as_str()) else {
                let hint = match BOUNCE_CATEGORIES.iter().map(|k| (distance(category, k), *k)).min() {
                    Some((d, k)) if d <= 4 => format!("did you mean `{k}`?"),
                    _ => format!("one of: {}", BOUNCE_CATEGORIES.join(", ")),
                };
                return Err(ConfigError::at(span, format!("unknown bounce category `{category}`"), hint));
            };
            let regex = regex::RegexBuilder::new(body)
                .case_insensitive(insensitive)
                .build()
                .map_err(|e| ConfigError::at(span, format!("bad regex `{pattern}`: {e}"), syntax))?;
            patterns.push(BouncePattern { regex, category });
        }
        let mut all = (*self.config.bounce_patterns).clone();
        all.extend(patterns);
        self.config.bounce_patterns = std::sync::Arc::new(all);
        Ok(())
    }

    /// Names used before their definitions are checked once the whole file is read.
    fn check_vmta_refs(&self) -> Result<(), ConfigError> {
        for (name, span) in &self.vmta_refs {
            // A leading NUL marks a pool member, which must be a VMTA (not another pool).
            let (name, member) = match name.strip_prefix('\0') {
                Some(n) => (n, true),
                None => (name.as_str(), false),
            };
            if self.config.vmtas.contains_key(name) || (!member && self.config.pools.contains_key(name)) {
                continue;
            }
            let mut known: Vec<&str> = self.config.vmtas.keys().map(String::as_str).collect();
            if !member {
                known.extend(self.config.pools.keys().map(String::as_str));
            }
            let hint = match known.iter().map(|k| (distance(name, k), *k)).min() {
                Some((d, k)) if d <= 3 => format!("did you mean `{k}`?"),
                _ => "define it with `<virtual-mta NAME>` or `<virtual-mta-pool NAME>`".into(),
            };
            let what = if member { "pool member" } else { "virtual MTA or pool" };
            return Err(ConfigError::at(span, format!("{what} `{name}` is not defined"), hint));
        }
        Ok(())
    }

    fn acct_file(&mut self, arg: Option<&str>, children: &[Node], span: &Span) -> Result<(), ConfigError> {
        let path = arg.ok_or_else(|| {
            ConfigError::at(span, "`<acct-file>` needs a path", "write `<acct-file /var/log/sluice/acct.csv>`")
        })?;
        let mut records = vec![RecordType::Delivered, RecordType::Bounced, RecordType::Transient];
        let (mut fields, mut privacy_key, mut max_size, mut delete_after) = (None, None, None, None);
        for (name, args, span) in self.directives(children, "<acct-file>")? {
            match name {
                "records" => {
                    records.clear();
                    for r in args.join(",").split(',').filter(|r| !r.is_empty()) {
                        match r.trim() {
                            "d" => records.push(RecordType::Delivered),
                            "b" => records.push(RecordType::Bounced),
                            "t" => records.push(RecordType::Transient),
                            "tq" => records.push(RecordType::QueueEvent),
                            "r" => records.push(RecordType::Received),
                            "f" => records.push(RecordType::Feedback),
                            "rb" => records.push(RecordType::RemoteBounce),
                            "rs" => self.config.warnings.push(Warning {
                                span: span.clone(),
                                message: format!("accounting record type `{r}` is not written yet; ignored"),
                            }),
                            other => {
                                return Err(ConfigError::at(
                                    span,
                                    format!("unknown record type `{other}`"),
                                    "use d, b, t, tq, f, rb, r or rs",
                                ))
                            }
                        }
                    }
                }
                "record-fields" => {
                    // `record-fields d *,header_Subject`: the types, then the fields.
                    let list = match args {
                        [_types, rest @ ..] if !rest.is_empty() => rest.join(","),
                        _ => args.join(","),
                    };
                    let chosen = fields.get_or_insert_with(Vec::new);
                    for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                        if let Some(name) = f.strip_prefix("header_") {
                            // RFC 5322 §3.6.8: a field name is printable ASCII but the colon.
                            if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
                                return Err(ConfigError::at(
                                    span,
                                    format!("`{f}` does not name a header field"),
                                    "write e.g. `header_Subject` or `header_List-Id`",
                                ));
                            }
                            chosen.push(f.to_string());
                        } else if f == "*" || ACCT_FIELDS.contains(&f) {
                            chosen.push(f.to_string());
                        } else {
                            let hint = nearest_hint(f, ACCT_FIELDS);
                            return Err(ConfigError::at(span, format!("unknown accounting field `{f}`"), hint));
                        }
                    }
                }
                "privacy-policy" => match args {
                    [kind, key] if kind.eq_ignore_ascii_case("hmac-sha256") => privacy_key = Some(key.clone()),
                    _ => {
                        return Err(ConfigError::at(
                            span,
                            "`privacy-policy` takes hmac-sha256 and a key",
                            "write `privacy-policy hmac-sha256 SECRETKEY`",
                        ))
                    }
                },
                "max-size" => max_size = Some(value(span, units::parse_size(one_arg(name, args, span)?))?),
                "delete-after" => delete_after = Some(value(span, units::parse_duration(one_arg(name, args, span)?))?),
                _ => self.unknown(
                    name,
                    span,
                    &["records", "record-fields", "privacy-policy", "max-size", "delete-after"],
                    "<acct-file>",
                )?,
            }
        }
        let path = PathBuf::from(path);
        self.config.acct_files.push(AcctFile { path, records, fields, privacy_key, max_size, delete_after });
        Ok(())
    }
}

/// Parses and validates a whole configuration.
pub fn load(file: &str, text: &str, include: &mut ast::IncludeLoader) -> Result<Config, ConfigError> {
    let nodes = ast::parse(file, text, include)?;
    let mut b = Builder {
        config: Config {
            host_name: "localhost".into(),
            postmaster: None,
            listeners: Vec::new(),
            immediate_tls: Vec::new(),
            tls_certificate: None,
            spool_dir: PathBuf::from("spool"),
            spool_sync: true,
            spool_segment_bytes: 64 << 20,
            shards: None,
            dns_server: None,
            total_max_smtp_in: 10_000,
            source_ip_limits: HashMap::new(),
            smtp_command_timeout: Duration::from_secs(300),
            smtp_data_timeout: Duration::from_secs(600),
            startup_delivery_delay: Duration::ZERO,
            startup_ramp: Duration::ZERO,
            sources: Vec::new(),
            named_sources: HashMap::new(),
            smtp_users: HashMap::new(),
            address_lists: HashMap::new(),
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
            vmtas: HashMap::new(),
            pattern_lists: HashMap::new(),
            bounce_patterns: std::sync::Arc::new(Vec::new()),
            pools: HashMap::new(),
            warnings: Vec::new(),
        },
        vmta_refs: Vec::new(),
        pattern_refs: Vec::new(),
        source_refs: Vec::new(),
        arc_sign_refs: Vec::new(),
        list_refs: Vec::new(),
        mgmt_access: Vec::new(),
        mgmt_key: None,
    };
    b.global(&nodes)?;
    for f in b.config.acct_files.iter().flat_map(|a| a.fields.iter().flatten()) {
        if let Some(name) = f.strip_prefix("header_") {
            if !b.config.acct_headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                b.config.acct_headers.push(name.to_string());
            }
        }
    }
    if let Some(m) = &mut b.config.mgmt {
        m.access = std::mem::take(&mut b.mgmt_access);
        m.api_key = b.mgmt_key.take();
    }
    for (name, span) in &b.list_refs {
        if !b.config.address_lists.contains_key(name) {
            return Err(ConfigError::at(
                span,
                format!("address-list `{name}` is not defined"),
                format!("define it with `<address-list {name}>`"),
            ));
        }
    }
    if let (Some(span), None) = (b.arc_sign_refs.first(), &b.config.arc_key) {
        return Err(ConfigError::at(
            span,
            "`arc-sign yes` needs an `arc-key`",
            "add `arc-key SELECTOR,DOMAIN,KEYFILE` (an RSA key)",
        ));
    }
    for (name, span) in &b.source_refs {
        if name != "{auth}" && !b.config.named_sources.contains_key(name) {
            return Err(ConfigError::at(
                span,
                format!("source `{name}` is not defined"),
                format!("define it with `<source {name}>`"),
            ));
        }
    }
    b.check_vmta_refs()?;
    for (name, span) in &b.pattern_refs {
        if !b.config.pattern_lists.contains_key(name) {
            return Err(ConfigError::at(
                span,
                format!("smtp-pattern-list `{name}` is not defined"),
                "define it with `<smtp-pattern-list NAME>`",
            ));
        }
    }
    // A `<domain $macro>` block is parsed once per domain; report each warning once.
    let mut seen = std::collections::HashSet::new();
    b.config.warnings.retain(|w| seen.insert((w.span.to_string(), w.message.clone())));
    if b.config.listeners.is_empty() {
        return Err(ConfigError {
            file: file.into(),
            line: 0,
            message: "no `smtp-listener` configured".into(),
            hint: "add `smtp-listener 127.0.0.1:2525`".into(),
        });
    }
    Ok(b.config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        load("t.conf", text, &mut |_| Err("no includes".into()))
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
        assert_eq!(c.listeners, vec!["127.0.0.1:2525".parse().unwrap()]);
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
            "smtp-listener 127.0.0.1:25\n<domain *>\nmax-smtp-out 5\nretry-after 1m,2m\n</domain>\n<domain example.com>\nmax-smtp-out 7\n</domain>\n<domain a.example.com>\nsmtp-hosts [127.0.0.1]:2526\n</domain>\n",
        )
        .unwrap();
        let s = c.domain_settings("a.example.com");
        assert_eq!(s.max_smtp_out, 7);
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
    fn acct_file_records() {
        let c = parse("smtp-listener 127.0.0.1:25\n<acct-file /tmp/a.csv>\nrecords d,b\n</acct-file>\n").unwrap();
        assert_eq!(c.acct_files[0].records, vec![RecordType::Delivered, RecordType::Bounced]);
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
        assert_eq!((err.line, err.message.as_str()), (3, "pool member `ghost` is not defined"));
        let err =
            parse("smtp-listener 127.0.0.1:25\n<virtual-mta m>\n smtp-source-host nowhere m.test\n</virtual-mta>\n")
                .unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (3, "`nowhere` is not an IP address"));
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
        let err = parse(
            "smtp-listener 127.0.0.1:25\n<bounce-category-patterns>\n /x/ spam-relatd\n</bounce-category-patterns>\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "b.conf:3: unknown bounce category `spam-relatd` (hint: did you mean `spam-related`?)"
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
    fn suffixes_and_queue_to_follow_the_most_specific_block() {
        assert_eq!(suffixes_farthest_first("a.b.c").collect::<Vec<_>>(), ["c", "b.c", "a.b.c"]);
        assert_eq!(suffixes_farthest_first("x").collect::<Vec<_>>(), ["x"]);
        let c = load(
            "q.conf",
            "smtp-listener 127.0.0.1:25\n<domain *>\n queue-to all.test\n</domain>\n<domain b.test>\n queue-to bee.test\n</domain>\n",
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
