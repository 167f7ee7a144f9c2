//! The typed configuration: what each block and directive becomes.

use crate::ast::Span;
use crate::overrides::DomainBlocks;
use crate::units::{Cidr, HostPort, Rate};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Policy for clients matching a `<source CIDR>`.
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    pub always_allow_relaying: bool,
    pub smtp_service: bool,
    pub max_message_size: u64,
    pub max_rcpt_per_message: u32,
    /// `max-message-hops` (100): more `Received:` fields than this is a loop (554 5.4.6).
    pub max_message_hops: u32,
    /// `dsn-return-default headers|full|system`: what a DSN returns of a message whose MAIL
    /// gave no RET (None: `system`, the headers).
    pub dsn_return_default: Option<DsnReturn>,
    /// `reject-spf-check-fail`, `-permerror`, `-temperror` (all yes, as the Guide has them):
    /// with `check-spf-inbound`, a message whose SPF check ends so is refused (550 5.7.23,
    /// 550 5.7.24, 451 4.7.24, RFC 7372) instead of taken with its Authentication-Results.
    pub reject_spf_fail: bool,
    pub reject_spf_permerror: bool,
    pub reject_spf_temperror: bool,
    /// `too-many-rcpts-fails-message` (no): past `max-rcpt-per-message` the whole message is
    /// refused at DATA, not the extra recipients at RCPT.
    pub too_many_rcpts_fails_message: bool,
    /// `bcc ADDRESS`: every message from the source is copied to it (archiving).
    pub bcc: Option<String>,
    /// `add-x-virtual-mta-header` (no): messages from the source leave with an
    /// `X-Virtual-MTA:` field naming the VMTA that sends them, unless they have one.
    pub add_x_virtual_mta_header: bool,
    /// `allow-mailmerge` (no; `always-allow-api-submission yes` sets it): PowerMTA's
    /// mail-merge SMTP commands (XACK, XMRG, XDFN, XPRT).
    pub allow_mailmerge: bool,
    /// `smtp-command-timeout`, `smtp-data-timeout` in the `<source>`: how long its clients
    /// may be silent (None: the global settings).
    pub smtp_command_timeout: Option<Duration>,
    pub smtp_data_timeout: Option<Duration>,
    pub process_x_virtual_mta: bool,
    pub default_virtual_mta: Option<String>,
    /// `traffic-class NAME`: its connections are received, and its mail spooled, signed and
    /// delivered, on that class's shards only.
    pub traffic_class: Option<String>,
    /// `process-x-traffic-class`: a message's `x-traffic-class:` header (naming a defined
    /// class) puts its delivery on that class's shards; without it the header is removed.
    pub process_x_traffic_class: bool,
    /// Keep the `x-virtual-mta:` header when relaying (it is removed by default).
    pub retain_x_virtual_mta: bool,
    /// Refuse a message whose `x-virtual-mta:` names no VMTA or pool (else: the default).
    pub reject_invalid_virtual_mta: bool,
    pub add_received_header: bool,
    pub hide_message_source: bool,
    /// `generate-bounces yes`: a recipient that bounces gets an RFC 3464 DSN sent to the
    /// message's envelope sender (never for a null sender).
    pub generate_bounces: bool,
    /// `allow-auth` (default yes, User's Guide 3.3.7.6): AUTH is offered (PLAIN, LOGIN,
    /// CRAM-MD5) when there is at least one `<smtp-user>`.
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
    /// `check-iprev-inbound`: the client's address has a PTR name that resolves back to it
    /// (RFC 8601 `iprev=`); `reject-iprev-check-fail`, `-permerror`, `-temperror` (no):
    /// refuse the message when it does not.
    pub check_iprev: bool,
    pub reject_iprev_fail: bool,
    pub reject_iprev_permerror: bool,
    pub reject_iprev_temperror: bool,
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
    /// `log-connections`, `log-commands`, `log-data`: the inbound session into sluice's log.
    pub log: SessionLog,
    /// What injection does to the header (`remove-received-headers`, `remove-header`,
    /// `add-message-id-header`, `add-date-header`, `process-x-envid`).
    pub headers: HeaderRules,
    /// `allow-unencrypted-plain-auth` (no): PLAIN and LOGIN only inside TLS.
    pub allow_unencrypted_plain_auth: bool,
    /// `verp-default`: each recipient gets its own MAIL FROM, `sender-rcpt=domain@sender.domain`.
    pub verp: bool,
    /// `pattern-list NAME`: the `<pattern-list>` that picks a message's VMTA.
    pub pattern_list: Option<String>,
    /// `rewrite-list NAME`: the `<rewrite-list>` applied to mail from this source.
    pub rewrite_list: Option<String>,
    /// `allow-smtputf8` (yes), `allow-chunking` (yes): the SMTPUTF8 and CHUNKING extensions.
    pub allow_smtputf8: bool,
    pub allow_chunking: bool,
}

/// Header changes made when a message is injected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// `remove-received-headers`: the Received fields the message came with go (sluice's own
    /// stays).
    pub remove_received: bool,
    /// `remove-header A,B`: fields removed.
    pub remove: Vec<String>,
    /// `add-message-id-header`: a Message-ID when the message has none.
    pub add_message_id: bool,
    /// `add-date-header`.
    pub add_date: AddDate,
    /// `date-header-time delivery`: that Date is the delivery attempt's, not the reception's.
    pub date_at_delivery: bool,
    /// `process-x-envid`: an `X-Envid:` field sets the DSN envelope id and goes.
    pub process_x_envid: bool,
}

/// `add-date-header no|yes|override`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AddDate {
    #[default]
    No,
    /// When the message has none.
    Yes,
    /// Replacing the message's own.
    Override,
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
    /// `redis-set KEY`: addresses in a Redis set shared by the fleet (`<cluster>`).
    RedisSet(String),
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
        self.check_spf || self.check_dkim || self.check_dmarc || self.check_arc || self.arc_sign || self.check_iprev
    }
}

/// A certificate chain and its private key (PEM files), and the line that named them.
#[derive(Debug, Clone, PartialEq, Eq)]
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
            log: SessionLog::default(),
            headers: HeaderRules::default(),
            allow_unencrypted_plain_auth: false,
            verp: false,
            pattern_list: None,
            rewrite_list: None,
            allow_smtputf8: true,
            allow_chunking: true,
            always_allow_relaying: false,
            smtp_service: true,
            max_message_size: 50 << 20,
            max_rcpt_per_message: 1000,
            max_message_hops: 100,
            dsn_return_default: None,
            reject_spf_fail: true,
            reject_spf_permerror: true,
            reject_spf_temperror: true,
            too_many_rcpts_fails_message: false,
            bcc: None,
            allow_mailmerge: false,
            add_x_virtual_mta_header: false,
            smtp_command_timeout: None,
            smtp_data_timeout: None,
            process_x_virtual_mta: false,
            default_virtual_mta: None,
            traffic_class: None,
            process_x_traffic_class: false,
            retain_x_virtual_mta: false,
            reject_invalid_virtual_mta: false,
            add_received_header: true,
            hide_message_source: false,
            generate_bounces: false,
            allow_auth: true,
            allow_starttls: true,
            require_auth: false,
            require_starttls_before_auth: false,
            max_auth_failure_rate: Rate { count: 3, period: Duration::from_secs(300) },
            restrictions: SenderRestrictions::default(),
            check_spf: false,
            check_dkim: false,
            check_dmarc: false,
            check_arc: false,
            check_iprev: false,
            reject_iprev_fail: false,
            reject_iprev_permerror: false,
            reject_iprev_temperror: false,
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
    /// `backoff-max-connect-rate`: `max-connect-rate` while backing off.
    pub backoff_max_connect_rate: Option<Rate>,
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
    /// `second-dkim-sign yes`: a second signature, made with `second-dkim-*` (User's Guide
    /// 10.3.4), e.g. the ESP's (`second-dkim-identity @esp.example`) beside the customer's.
    pub second_dkim_sign: bool,
    pub second_dkim: DkimOptions,
    /// `use-starttls` (default yes): STARTTLS when the receiver offers it.
    pub use_starttls: bool,
    /// `require-starttls`: no delivery without TLS (deferred with 4.7.10).
    pub require_starttls: bool,
    /// `downgrade-8bit quoted-printable|bounce`.
    pub downgrade_8bit: Downgrade8bit,
    /// How the SMTP client behaves towards this destination: timeouts, what a reply means,
    /// extensions not to use.
    pub smtp: SmtpOptions,
    /// `bounce-upon-no-mx`: a domain without MX records bounces instead of trying its
    /// address records (at once, or for mail queued at least this long).
    pub bounce_upon_no_mx: Option<Duration>,
    /// `deliver-local-dsn` (yes): DSNs for mail whose sender is in this domain (no: none,
    /// the accounting rows as ever).
    pub deliver_local_dsn: bool,
    /// `retry-after-dns-error` (1m): when mail deferred by a failed lookup is tried again
    /// (the domain is looked up again then).
    pub retry_after_dns_error: Duration,
    /// `type`; `discard-as-bounce` for a discarding queue.
    pub delivery_type: DeliveryType,
    pub discard_as_bounce: bool,
    /// `reroute-to-virtual-mta NAME`: the queue's mail goes to this VMTA's queue instead.
    pub reroute_to: Option<String>,
    /// `backoff-reroute-to-virtual-mta NAME`: while the queue backs off, its mail goes there.
    pub backoff_reroute_to: Option<String>,
    /// `max-cold-virtual-mta-msg N/day[,N/day...]`: messages a day a cold VMTA takes for this
    /// destination, the first day's limit first, the last one on.
    pub max_cold_msg: Vec<u32>,
    /// `cluster-max-msg-rate`, `cluster-max-smtp-out`: limits for the whole fleet
    /// (`<cluster>`), per destination domain, on top of this host's own.
    pub cluster_max_msg_rate: Option<Rate>,
    pub cluster_max_smtp_out: Option<u32>,
}

/// The SMTP client's settings for a destination (PowerMTA's `<domain>` timeouts and reply
/// rules; defaults as `pmta show settings` prints them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpOptions {
    /// `connect-timeout` (2m): for the TCP connection to be established.
    pub connect_timeout: Duration,
    /// `smtp-greeting-timeout` (5m): for the 220 greeting once connected.
    pub greeting_timeout: Duration,
    /// `data-send-timeout` (3m): for each part of the message body to be taken.
    pub data_send_timeout: Duration,
    /// `smtp-data-termination-timeout` (10m): for the reply to the end of data.
    pub data_termination_timeout: Duration,
    /// `max-errors-per-connection` (0: unlimited): recipient-level errors after which the
    /// connection is closed.
    pub max_errors_per_connection: u32,
    /// `mx-connection-attempts` (10): next hops tried by one connection before it gives up.
    pub mx_connection_attempts: u32,
    /// `smtp-421-means-mx-unavailable` (no): a 421 moves the connection to the next MX at once.
    pub smtp_421_means_mx_unavailable: bool,
    /// `smtp-553-means-invalid-mailbox` (yes): a 553 to RCPT without an enhanced status code
    /// is a bad mailbox (5.1.1).
    pub smtp_553_means_invalid_mailbox: bool,
    /// `bounce-upon-5xx-greeting` (yes): a 5xx greeting bounces the queue's mail; no: it is
    /// a temporary failure and the next MX is tried.
    pub bounce_upon_5xx_greeting: bool,
    /// `assume-delivery-upon-data-termination-timeout` (no).
    pub assume_delivery_upon_data_termination_timeout: bool,
    /// `ignore-8bitmime`, `ignore-pipelining`, `ignore-dsn`, `ignore-chunking` (all no, as
    /// in PowerMTA): the extension is not used even when the receiver offers it.
    pub ignore_8bitmime: bool,
    pub ignore_pipelining: bool,
    pub ignore_dsn: bool,
    pub ignore_chunking: bool,
    /// `log-connections`, `log-commands`, `log-data`: the outbound session into sluice's log.
    pub log: SessionLog,
    /// `remove-header A,B` in `<domain>`: fields taken out of the message as it is sent.
    pub remove_header: Vec<String>,
    /// `auth-username`, `auth-password`: log in (SMTP AUTH) to a receiver that offers it, as
    /// to a smarthost; either set (non-empty) asks for it.
    pub auth_username: String,
    pub auth_password: Secret,
    /// `use-unencrypted-plain-auth` (no): PLAIN and LOGIN outside TLS too (CRAM-MD5 always).
    pub use_unencrypted_plain_auth: bool,
}

/// PowerMTA's HTTP Transmissions API on listeners of its own (`<transmissions-api>` with
/// `api-key`s, `<transmissions-api-listener ADDR>` with `tls-certificate`): HTTPS, keyed by
/// the `Authorization` header, `<source {transmissions-api}>` applying.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransmissionsApi {
    pub keys: Vec<String>,
    pub listeners: Vec<ApiListener>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiListener {
    pub addr: SocketAddr,
    /// One PEM file with the certificate chain and its private key (`pmtakeytool newcert`'s
    /// form; `cat cert.pem key.pem`).
    pub certificate: TlsCertificate,
}

/// A pickup directory (`pickup DIR BAD-DIR`): each file is one message, its envelope in
/// leading `x-sender:` / `x-receiver:` (one per recipient) / `x-envid:` lines, as IIS and
/// PowerMTA have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pickup {
    pub dir: PathBuf,
    /// Where files that are not a message go (with a `.why` file beside each).
    pub bad_dir: PathBuf,
    /// `pickup-remove-dot`: the feeder doubled leading dots as for SMTP; take one away.
    pub remove_dot: bool,
}

/// What a DSN returns of the message (RFC 3461's RET).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnReturn {
    Full,
    Headers,
}

/// A password from the configuration: shown as `<secret>` wherever settings are printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<secret>" })
    }
}

impl Default for SmtpOptions {
    fn default() -> Self {
        SmtpOptions {
            connect_timeout: Duration::from_secs(120),
            greeting_timeout: Duration::from_secs(300),
            data_send_timeout: Duration::from_secs(180),
            data_termination_timeout: Duration::from_secs(600),
            max_errors_per_connection: 0,
            mx_connection_attempts: 10,
            smtp_421_means_mx_unavailable: false,
            smtp_553_means_invalid_mailbox: true,
            bounce_upon_5xx_greeting: true,
            assume_delivery_upon_data_termination_timeout: false,
            ignore_8bitmime: false,
            ignore_pipelining: false,
            ignore_dsn: false,
            ignore_chunking: false,
            log: SessionLog::default(),
            remove_header: Vec::new(),
            auth_username: String::new(),
            auth_password: Secret::default(),
            use_unencrypted_plain_auth: false,
        }
    }
}

/// What of an SMTP session goes into sluice's log (`log-connections`, `log-commands`,
/// `log-data`), for a source (inbound) or a domain (outbound).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionLog {
    /// Connections opened and closed, with the peer.
    pub connections: bool,
    /// Every command and reply.
    pub commands: bool,
    /// The message data too.
    pub data: bool,
}

impl SessionLog {
    pub fn any(&self) -> bool {
        self.connections || self.commands || self.data
    }
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
            backoff_max_connect_rate: None,
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
            second_dkim_sign: false,
            second_dkim: DkimOptions::default(),
            use_starttls: true,
            require_starttls: false,
            downgrade_8bit: Downgrade8bit::QuotedPrintable,
            smtp: SmtpOptions::default(),
            bounce_upon_no_mx: None,
            retry_after_dns_error: Duration::from_secs(60),
            deliver_local_dsn: true,
            delivery_type: DeliveryType::Smtp,
            discard_as_bounce: false,
            reroute_to: None,
            backoff_reroute_to: None,
            max_cold_msg: vec![0],
            cluster_max_msg_rate: None,
            cluster_max_smtp_out: None,
        }
    }
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
    /// One of `BOUNCE_CATEGORIES`, `success`, or a category of the operator's own.
    pub category: std::sync::Arc<str>,
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
    pub(crate) domains: DomainBlocks,
    /// `cold-virtual-mta NAME` (repeatable): VMTAs warming up that take, in turn, the first
    /// `max-cold-virtual-mta-msg` messages a day per destination of mail selecting this one.
    pub cold: Vec<String>,
    /// `rewrite-list NAME`: rewrites for mail selecting this VMTA.
    pub rewrite_list: Option<String>,
    /// `smtp-proxy-source-host` lines or `use-proxy` (its own, else the global ones): its
    /// mail leaves from proxy hosts, tried in order (the next only when connecting to the one
    /// before failed). The first's client address is the VMTA's source IP for every limit.
    pub proxies: Vec<Proxy>,
    /// `use-proxy NAME,...` as written, resolved once every `<proxy>` is read.
    pub(crate) use_proxy: Option<(Vec<String>, crate::ast::Span)>,
    /// `proxy-protocol 1|2` for its `smtp-proxy-source-host` lines.
    pub(crate) proxy_version: Option<u8>,
    /// `traffic-class NAME`: its queues live on that class's shards only.
    pub traffic_class: Option<String>,
}

/// A proxy host that connects to receivers for this one: sluice connects to `server`, writes
/// HAProxy's PROXY protocol header (v1 text, v2 binary) naming `client` as the source and the
/// receiver as the destination, and the proxy opens the connection from `client` (Debian's
/// haproxy: `bind ... accept-proxy`, `source 0.0.0.0 usesrc clientip`, `server s 0.0.0.0:0`).
/// From `smtp-proxy-source-host LOCAL SERVER:PORT CLIENT[:PORT] HOSTNAME` or `<proxy NAME>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The `<proxy>` name, or the server as written.
    pub name: String,
    /// The proxy host, as written (a name is looked up when sluice starts).
    pub server: String,
    pub port: u16,
    /// The proxy host's address: known at once when `server` is an address, else at start.
    pub server_addr: Option<SocketAddr>,
    /// The local address to connect to the proxy from (None: the kernel's choice, as for a
    /// CIDR: the local address that routes to the proxy).
    pub local: Option<IpAddr>,
    /// The address the proxy sends from: the source receivers see (and SPF checks).
    pub client: SocketAddr,
    /// The name said in EHLO through this proxy.
    pub host_name: String,
    /// PROXY protocol version: 1 (text) or 2 (binary).
    pub version: u8,
}

/// `<pattern-list NAME>`: rules that pick the VMTA of a message as it is injected, the first
/// match winning (`pattern-list NAME` in a `<source>`).
#[derive(Debug, Clone)]
pub struct VmtaPatternList {
    pub rules: Vec<VmtaPattern>,
}

#[derive(Debug, Clone)]
pub struct VmtaPattern {
    pub on: PatternOn,
    pub regex: regex::Regex,
    /// `virtual-mta=NAME`.
    pub vmta: Option<String>,
    /// `call-to:LIST`: the message goes on through that list.
    pub call_to: Option<String>,
}

/// What a `<pattern-list>` rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternOn {
    MailFrom,
    /// Each recipient in turn (PowerMTA: the first matching one picks for the message).
    RcptTo,
    /// A header field's whole value, as received.
    Header(String),
    /// `*`: every message.
    Any,
}

/// `<rewrite-list NAME>`: envelope sender and From-domain rewrites.
#[derive(Debug, Clone, Default)]
pub struct RewriteList {
    /// `mail-from SOURCE TARGET`, the first match applying.
    pub mail_from: Vec<(AddressPattern, AddressPattern)>,
    /// `from-domain PATTERN DOMAIN`: the From header's address domain.
    pub(crate) from_domain: Vec<(crate::overrides::DomainPattern, String)>,
}

/// `local@domain` where either part may be `*`, or `<>` (the null sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressPattern {
    Null,
    /// None: `*`.
    Address {
        local: Option<String>,
        domain: Option<String>,
    },
}

impl RewriteList {
    /// The envelope sender after the first `mail-from` rule matching it.
    pub fn mail_from(&self, sender: &str) -> Option<String> {
        let (l, d) = sender.rsplit_once('@').unwrap_or((sender, ""));
        for (from, to) in &self.mail_from {
            let hit = match from {
                AddressPattern::Null => sender.is_empty(),
                AddressPattern::Address { local, domain } => {
                    !sender.is_empty()
                        && local.as_ref().is_none_or(|x| x.eq_ignore_ascii_case(l))
                        && domain.as_ref().is_none_or(|x| x.eq_ignore_ascii_case(d))
                }
            };
            if hit {
                return Some(match to {
                    AddressPattern::Null => String::new(),
                    AddressPattern::Address { local, domain } => {
                        format!("{}@{}", local.as_deref().unwrap_or(l), domain.as_deref().unwrap_or(d))
                    }
                });
            }
        }
        None
    }

    /// Whether it has `from-domain` rules.
    pub fn rewrites_from(&self) -> bool {
        !self.from_domain.is_empty()
    }

    /// The new domain for a From address at `domain`, if a `from-domain` rule matches.
    pub fn from_domain(&self, domain: &str) -> Option<&str> {
        let lower = domain.to_ascii_lowercase();
        self.from_domain.iter().find(|(p, _)| p.matches(&lower)).map(|(_, to)| to.as_str())
    }
}

/// `type smtp|discard|pipe|file|http-delivery` for a destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeliveryType {
    #[default]
    Smtp,
    /// Recorded as delivered (or bounced, `discard-as-bounce`), never sent.
    Discard,
    /// `pipe`, `file`, `http-delivery`: not implemented; the queue holds its mail.
    Held,
}

/// An SMTP listener: where, the named `<source>` its sessions take on top of their address's
/// (`source=NAME`), and whether TLS starts at connect (`immediate-tls yes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub source: Option<String>,
    pub immediate_tls: bool,
}

/// What an `x-virtual-mta:` header or `default-virtual-mta` may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmtaTarget {
    Vmta(String),
    Pool(String),
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

/// `relay-domain PATTERN` and `relay-address ADDRESS` (global): recipients any client may
/// send to, whatever its `<source>` (mostly inbound mail relayed on to an inside host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayTargets {
    pub(crate) domains: Vec<crate::overrides::DomainPattern>,
    /// Lower case.
    pub(crate) addresses: Vec<String>,
}

impl RelayTargets {
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.addresses.is_empty()
    }

    /// Whether mail to `address` is accepted from anyone.
    pub fn covers(&self, address: &str) -> bool {
        let lower = address.to_ascii_lowercase();
        if self.addresses.contains(&lower) {
            return true;
        }
        let domain = lower.rsplit_once('@').map_or("", |(_, d)| d);
        !domain.is_empty() && self.domains.iter().any(|p| p.matches(domain))
    }
}

/// `<mx-rollup-list>`: `mx HOST NAME.rollup [rollup-by-ip]` lines. A domain whose most
/// preferred MX hosts all match one rollup's entries joins the queue NAME.rollup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MxRollupList {
    pub entries: Vec<MxRollupEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRollupEntry {
    /// A host name, or `*.suffix` (lower case).
    pub host: String,
    /// The rollup queue's domain, `NAME.rollup`.
    pub rollup: String,
    /// `rollup-by-ip`: the rollup queue delivers to the hosts the rolled-up domain resolved to.
    pub by_ip: bool,
}

impl MxRollupEntry {
    fn matches(&self, host: &str) -> bool {
        match self.host.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host[..host.len() - suffix.len()].ends_with('.')
            }
            None => self.host == host,
        }
    }
}

impl MxRollupList {
    /// The rollup queue for a domain whose most preferred MX hosts are `hosts` (lower case,
    /// no trailing dot): the first rollup every host matches, unless it lists more exact
    /// hosts than DNS gave.
    pub fn rollup_for(&self, hosts: &[&str]) -> Option<&MxRollupEntry> {
        if hosts.is_empty() {
            return None;
        }
        let mut names: Vec<&str> = Vec::new();
        for e in &self.entries {
            if !names.contains(&e.rollup.as_str()) {
                names.push(&e.rollup);
            }
        }
        names.into_iter().find_map(|name| {
            let entries: Vec<&MxRollupEntry> = self.entries.iter().filter(|e| e.rollup == name).collect();
            let exact = entries.iter().filter(|e| !e.host.starts_with("*.")).count();
            let all = hosts.iter().all(|h| entries.iter().any(|e| e.matches(h)));
            (all && exact <= hosts.len())
                .then(|| *entries.iter().find(|e| hosts.iter().any(|h| e.matches(h))).expect("all matched"))
        })
    }

    /// The exact MX hosts listed for a rollup queue (its next hops when no `smtp-hosts`).
    pub fn hosts_of(&self, rollup: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| e.rollup == rollup && !e.host.starts_with("*."))
            .map(|e| e.host.as_str())
            .collect()
    }
}

/// `<traffic-class NAME>`: shards reserved for one stream of mail (transactional apart from
/// bulk): only the class's sources are received there and only its VMTAs' queues live there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficClass {
    pub name: String,
    /// `shards N`: how many of the host's shards it reserves.
    pub shards: u32,
}

/// Which shards run what: the classes' reserved shards (the highest numbers, in the order the
/// classes are defined) and the rest, for all other traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSets {
    pub general: std::ops::Range<u32>,
    pub classes: Vec<(String, std::ops::Range<u32>)>,
}

impl ShardSets {
    /// The sets for `shards` shards; Err when the classes leave none for other traffic.
    pub fn new(classes: &[TrafficClass], shards: u32) -> Result<ShardSets, String> {
        let reserved: u32 = classes.iter().map(|c| c.shards).sum();
        if reserved >= shards && !classes.is_empty() {
            return Err(format!(
                "the traffic classes reserve {reserved} shards and this host runs {shards}: \
                 at least one must be left for other traffic (raise `shards`, or reserve fewer)"
            ));
        }
        let mut at = shards - reserved;
        let general = 0..at;
        let classes = classes
            .iter()
            .map(|c| {
                let r = at..at + c.shards;
                at += c.shards;
                (c.name.clone(), r)
            })
            .collect();
        Ok(ShardSets { general, classes })
    }

    /// The class that reserves `shard` (None: a general shard).
    pub fn class_of(&self, shard: u32) -> Option<&str> {
        self.classes.iter().find(|(_, r)| r.contains(&shard)).map(|(n, _)| n.as_str())
    }

    /// The shards of `class` (None, or a class not defined: the general ones).
    pub fn of(&self, class: Option<&str>) -> std::ops::Range<u32> {
        class
            .and_then(|name| self.classes.iter().find(|(n, _)| n == name))
            .map_or(self.general.clone(), |(_, r)| r.clone())
    }
}

/// `<cluster>`: sluice hosts sharing limits, suppression and job control through Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `redis-server HOST:PORT` or a `redis://` / `rediss://` URL.
    pub redis_url: String,
    /// `node-name`: this host in the fleet (default: `host-name`).
    pub node_name: String,
    /// `expected-nodes N`: with Redis unreachable, each host takes 1/N of a fleet limit.
    pub expected_nodes: u32,
    /// `spool-takeover DIR`: every node's spool is `DIR/<node-name>`, and a live peer adopts
    /// the spool of a node whose lease lapsed (src/takeover.rs).
    pub spool_takeover: Option<std::path::PathBuf>,
    /// `takeover-after`: how long a node's lease lasts unrenewed (default 10 s).
    pub takeover_after: std::time::Duration,
}
