//! `/metrics`: the Prometheus exposition (OpenMetrics text, by `prometheus-client`) of the
//! shards' counters, what the accounting records told the observer, and the queue and
//! connection gauges. Label sets are bounded (the observer folds the rest into `other`).

use super::stats::{self, Outcomes};
use super::{error, fail, Api, Fail, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sluice_netio::admin::{AdminCmd, AdminReply};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Vmta {
    vmta: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Category {
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainOutcome {
    domain: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedbackType {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct List {
    list: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: String,
}

fn counter(n: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(n);
    c
}

fn gauge(n: u64) -> Gauge {
    let g = Gauge::default();
    g.set(n as i64);
    g
}

fn family<L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug>(
    values: impl IntoIterator<Item = (L, u64)>,
) -> Family<L, Counter> {
    let f = Family::<L, Counter>::default();
    for (labels, n) in values {
        f.get_or_create(&labels).inc_by(n);
    }
    f
}

pub(super) fn exposition(api: &Api) -> Response {
    match registry(api) {
        Ok(reg) => {
            let mut text = String::new();
            if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &reg) {
                return error(500, format!("metrics encoding failed: {e}"));
            }
            super::with_type(200, "application/openmetrics-text; version=1.0.0; charset=utf-8", text.into_bytes())
        }
        Err(f) => f.into(),
    }
}

/// A registry with this moment's values (the sources are counters kept elsewhere).
fn registry(api: &Api) -> Result<Registry, Fail> {
    let replies = api.responder.admin(AdminCmd::Snapshot).map_err(|e| fail(503, e))?;
    let snaps: Vec<_> =
        replies.into_iter().filter_map(|r| if let AdminReply::Snapshot(s) = r { Some(s) } else { None }).collect();
    let t = api.responder.totals();
    let o = api.observer.lock().expect("not poisoned");
    let mut reg = Registry::with_prefix("sluice");
    reg.register("messages_received", "Messages accepted and on disk.", counter(t.msgs_in));
    reg.register("recipients_received", "Recipients accepted.", counter(t.rcpts_in));
    reg.register(
        "connection_panics",
        "Connections closed because handling their input panicked (the shard went on).",
        counter(t.connection_panics),
    );
    reg.register(
        "acct_records_dropped",
        "Accounting records dropped: the accounting writer took none for too long.",
        counter(t.acct_records_dropped),
    );
    reg.register(
        "dkim_unsignable",
        "Messages left unsigned: no From address with a domain to sign for.",
        counter(t.dkim_unsignable),
    );
    let by_vmta = |f: fn(&Outcomes) -> u64| family(o.by_vmta.iter().map(|(v, c)| (Vmta { vmta: v.clone() }, f(c))));
    reg.register("messages_delivered", "Recipients delivered, by VMTA.", by_vmta(|c| c.delivered));
    reg.register("messages_deferred", "Delivery attempts deferred, by VMTA.", by_vmta(|c| c.deferred));
    let categories = o.bounced_by_category.iter().map(|(c, n)| (Category { category: c.clone() }, *n));
    reg.register("messages_bounced", "Recipients bounced, by bounce category.", family(categories));
    let (top, rest) = o.top_domains(stats::TOP_DOMAINS);
    let domains = top.iter().map(|(d, c)| (d.as_str(), *c)).chain(std::iter::once(("other", rest)));
    let domain_outcomes = domains.flat_map(|(d, c)| {
        [("delivered", c.delivered), ("bounced", c.bounced), ("deferred", c.deferred)]
            .map(|(outcome, n)| (DomainOutcome { domain: d.to_string(), outcome: outcome.to_string() }, n))
    });
    reg.register(
        "domain_recipients",
        "Outcomes for the busiest destination domains (the rest: other).",
        family(domain_outcomes),
    );
    let feedback = o.feedback.iter().map(|(k, n)| (FeedbackType { r#type: k.clone() }, *n));
    reg.register("feedback_reports", "Feedback-loop reports (f records), by feedback type.", family(feedback));
    let lists = api.responder.lists();
    let suppressed = lists.iter().map(|(name, l)| (List { list: name.clone() }, l.hits()));
    reg.register("suppressed", "Recipients refused by a suppression list.", family(suppressed));
    reg.register("delivery_latency_seconds", "From reception to delivery.", o.latency.0.clone());
    let queues: Vec<_> = snaps.iter().flat_map(|s| s.queues.iter()).collect();
    let mut by_vmta_q: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for q in &queues {
        let e = by_vmta_q.entry(q.vmta.as_str()).or_default();
        e.0 += q.rcpts;
        e.1 += q.bytes;
    }
    let gauges = |f: fn(&(u64, u64)) -> u64| {
        let fam = Family::<Vmta, Gauge>::default();
        for (v, c) in &by_vmta_q {
            fam.get_or_create(&Vmta { vmta: v.to_string() }).set(f(c) as i64);
        }
        fam
    };
    reg.register("queue_recipients", "Recipients queued, by VMTA.", gauges(|c| c.0));
    reg.register("queue_bytes", "Bytes queued (per recipient), by VMTA.", gauges(|c| c.1));
    reg.register("queues", "Queues holding mail.", gauge(queues.len() as u64));
    let conns = Family::<Direction, Gauge>::default();
    conns.get_or_create(&Direction { direction: "in".into() }).set(api.responder.inbound_connections() as i64);
    let out: u32 = snaps.iter().map(|s| s.conns_out).sum();
    conns.get_or_create(&Direction { direction: "out".into() }).set(out as i64);
    reg.register("connections", "Open SMTP connections.", conns);
    let uptime = crate::clock::unix_ms().saturating_sub(api.responder.started_unix_ms()) / 1000;
    reg.register("uptime_seconds", "Seconds since start.", gauge(uptime));
    if let Some(fleet) = &api.cluster {
        use std::sync::atomic::Ordering::Relaxed;
        let st = &fleet.status;
        // (name, help, value, a counter rather than a gauge)
        let mut fleet_metrics = vec![
            (
                "cluster_connected",
                "1 while Redis answers (fleet limits shared).",
                st.connected.load(Relaxed) as u64,
                false,
            ),
            ("cluster_tokens_granted", "Message tokens leased for fleet rates.", st.tokens_granted.load(Relaxed), true),
            ("cluster_slots_held", "Fleet connection slots this host holds.", st.slots_held.load(Relaxed), false),
            ("cluster_redis_lost", "Times Redis became unreachable.", st.lost_connection.load(Relaxed), true),
        ];
        if let Some(t) = &st.takeover {
            fleet_metrics.extend([
                (
                    "cluster_spool_lease_held",
                    "1 while this host holds its spool-takeover lease (it delivers).",
                    t.lease_held.load(Relaxed) as u64,
                    false,
                ),
                (
                    "cluster_spool_adoptions",
                    "Spools of lapsed peers adopted by this host.",
                    t.adoptions.load(Relaxed),
                    true,
                ),
                (
                    "cluster_spool_adopted_messages",
                    "Messages moved here from adopted spools.",
                    t.adopted_messages.load(Relaxed),
                    true,
                ),
            ]);
        }
        for (name, help, value, is_counter) in fleet_metrics {
            match is_counter {
                true => reg.register(name, help, counter(value)),
                false => reg.register(name, help, gauge(value)),
            }
        }
    }
    Ok(reg)
}
