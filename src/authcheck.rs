//! Inbound authentication on the control plane (mail-auth): SPF (RFC 7208), DKIM (RFC 6376),
//! DMARC (RFC 7489) and ARC (RFC 8617) for messages from sources with `check-*-inbound`, and
//! the ARC seal for sources with `arc-sign`. DNS goes through mail-auth's hickory resolver,
//! pointed at `dns-server` when set, whose cache keeps answers for their TTL. The result
//! comes back as headers to put on top of the message: an ARC set when sealed, then
//! Authentication-Results.

use mail_auth::common::headers::HeaderWriter;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{dmarc::verify::DmarcParameters, spf::verify::SpfParameters};
use mail_auth::{AuthenticatedMessage, AuthenticationResults, DmarcResult, MessageAuthenticator, SpfResult};
use sluice_config::Config;
use sluice_engine::dkim::{unstuffed, ArcKey};
use sluice_netio::VerifyRequest;
use std::time::Duration;

pub struct Checker {
    authenticator: MessageAuthenticator,
    host_name: String,
    arc_key: Option<ArcKey>,
}

impl Checker {
    pub fn new(config: &Config, arc_key: Option<ArcKey>) -> std::io::Result<Checker> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        let authenticator = match config.dns_server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![ns]), opts)
            }
            None => MessageAuthenticator::new_system_conf(),
        }
        .map_err(|e| std::io::Error::other(format!("cannot set up the authentication resolver: {e}")))?;
        Ok(Checker { authenticator, host_name: config.host_name.clone(), arc_key })
    }

    /// Runs the checks a request asks for; returns (headers to prepend, a summary line).
    pub async fn check(&self, req: &VerifyRequest) -> (Vec<u8>, String) {
        let raw: Vec<u8> = unstuffed(&req.data).concat();
        let Some(message) = AuthenticatedMessage::parse(&raw) else {
            let header = format!("Authentication-Results: {}; none (message could not be parsed)\r\n", self.host_name);
            return (header.into_bytes(), "unparsed".into());
        };
        let helo = if req.helo.is_empty() { "unknown" } else { req.helo.as_str() };
        let mut results = AuthenticationResults::new(&self.host_name);
        let mut summary = Vec::new();
        let spf = if req.spf {
            let out = self
                .authenticator
                .verify_spf(SpfParameters::verify_mail_from(req.client_ip, helo, &self.host_name, &req.mail_from))
                .await;
            summary.push(format!("spf={}", spf_word(out.result())));
            results = results.with_spf_mailfrom_result(&out, req.client_ip, &req.mail_from, helo);
            Some(out)
        } else {
            None
        };
        if req.iprev {
            let out = self.authenticator.verify_iprev(req.client_ip).await;
            let word = match &out.result {
                mail_auth::IprevResult::Pass => "pass",
                mail_auth::IprevResult::Fail(_) => "fail",
                mail_auth::IprevResult::TempError(_) => "temperror",
                mail_auth::IprevResult::PermError(_) => "permerror",
                mail_auth::IprevResult::None => "none",
            };
            summary.push(format!("iprev={word}"));
            results = results.with_iprev_result(&out, req.client_ip);
        }
        let dkim = if req.dkim { self.authenticator.verify_dkim(&message).await } else { Vec::new() };
        if req.dkim {
            let pass = dkim.iter().any(|d| d.result() == &mail_auth::DkimResult::Pass);
            let word = if dkim.is_empty() {
                "none"
            } else if pass {
                "pass"
            } else {
                "fail"
            };
            summary.push(format!("dkim={word}"));
            results = results.with_dkim_results(&dkim, message.from());
        }
        let arc = if req.arc { Some(self.authenticator.verify_arc(&message).await) } else { None };
        if let Some(arc) = &arc {
            summary.push(format!("arc={}", dkim_word(arc.result())));
            results = results.with_arc_result(arc, req.client_ip);
        }
        if req.dmarc {
            let mail_from_domain = req.mail_from.rsplit_once('@').map_or(helo, |(_, d)| d);
            let spf_out = spf.as_ref().expect("DMARC checks SPF too");
            let dmarc =
                self.authenticator.verify_dmarc(DmarcParameters::new(&message, &dkim, mail_from_domain, spf_out)).await;
            let word = match (dmarc.spf_result(), dmarc.dkim_result()) {
                (DmarcResult::Pass, _) | (_, DmarcResult::Pass) => "pass",
                (DmarcResult::None, DmarcResult::None) => "none",
                _ => "fail",
            };
            summary.push(format!("dmarc={word}"));
            results = results.with_dmarc_result(&dmarc);
        }
        let mut headers = Vec::new();
        if req.seal {
            match (&self.arc_key, &arc) {
                (Some(key), Some(arc)) => match key.seal(&message, &results, arc) {
                    Ok(Some(set)) => {
                        headers.extend_from_slice(set.as_bytes());
                        summary.push("sealed".into());
                    }
                    Ok(None) => summary.push("not-sealed(chain failed)".into()),
                    Err(e) => tracing::error!(error = %e, "ARC sealing failed"),
                },
                _ => tracing::error!("arc-sign is set but no arc-key is configured"),
            }
        }
        headers.extend_from_slice(results.to_header().as_bytes());
        (headers, summary.join(" "))
    }
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_word(r: &mail_auth::DkimResult) -> &'static str {
    match r {
        mail_auth::DkimResult::Pass => "pass",
        mail_auth::DkimResult::None => "none",
        mail_auth::DkimResult::Neutral(_) => "neutral",
        mail_auth::DkimResult::Fail(_) => "fail",
        mail_auth::DkimResult::PermError(_) => "permerror",
        mail_auth::DkimResult::TempError(_) => "temperror",
    }
}
