//! Alerts: rules on spend, error rate, latency, loops and budgets, checked on every node every
//! `engine.alert_every_ms`. A rule whose measure goes above its threshold fires — one
//! conditional update in the store, so among nodes exactly one opens the incident and queues
//! the webhook call, in the same commit — and calms when it falls back, resolving the
//! incident. Webhook calls are signed (HMAC-SHA256 with a vault secret), kept in the store until
//! delivered, and retried with a growing pause by whichever node claims them.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use steward_store::{
    AlertChange, AlertRecord, DeliveryOutcome, DeliveryRecord, IncidentRecord, Store,
};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::costs::{self, CostBy};

/// What a rule measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// US dollars spent on models (managed runs and gateway calls) in the window — summed over
    /// the whole hours the window touches, as spend is kept per hour.
    SpendUsd,
    /// The share (0 to 1) of runs started in the window and ended that failed.
    ErrorRate,
    /// The 95th percentile of gateway calls' duration in the window, in milliseconds (the latest
    /// 10,000 calls).
    LatencyMs,
    /// Runs started in the window that were stopped as looping (`liveness.maxRepeats`).
    Loops,
    /// The share (0 to 1) of budget account `account`'s cap spent or held now.
    BudgetUsed,
}

impl Metric {
    fn as_str(self) -> &'static str {
        match self {
            Metric::SpendUsd => "spend_usd",
            Metric::ErrorRate => "error_rate",
            Metric::LatencyMs => "latency_ms",
            Metric::Loops => "loops",
            Metric::BudgetUsed => "budget_used",
        }
    }
}

/// A webhook an alert calls when it fires and when it calms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// An `http` or `https` URL.
    pub url: String,
    /// The name of the vault secret each call is signed with.
    pub secret: String,
}

/// An alert rule: fires when `metric` is above `above`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    pub metric: Metric,
    pub above: f64,
    /// The window measured, back from now (not used by `budget_used`).
    #[serde(default = "default_window")]
    pub window_minutes: u32,
    /// Only this agent's runs or calls (not with `budget_used`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The budget account of `budget_used`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Fewer ended runs (`error_rate`) or calls (`latency_ms`) than this judge nothing.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
}

fn default_window() -> u32 {
    60
}

fn default_min_samples() -> u32 {
    1
}

impl AlertSpec {
    /// What is wrong with the rule, for the one who wrote it.
    pub fn check(&self) -> Result<(), String> {
        if !self.above.is_finite() || self.above < 0.0 {
            return Err(format!("above: a number from 0, found {}", self.above));
        }
        if matches!(self.metric, Metric::ErrorRate | Metric::BudgetUsed) && self.above > 1.0 {
            return Err(format!(
                "above: {} is a share from 0 to 1; found {}",
                self.metric.as_str(),
                self.above
            ));
        }
        if !(1..=10_080).contains(&self.window_minutes) {
            return Err(format!(
                "window_minutes: from 1 to 10080 (a week), found {}",
                self.window_minutes
            ));
        }
        if !(1..=1_000_000).contains(&self.min_samples) {
            return Err("min_samples: from 1 to 1000000".into());
        }
        match (self.metric, &self.account, &self.agent) {
            (Metric::BudgetUsed, None, _) => {
                return Err("account: budget_used needs the budget account it watches".into())
            }
            (Metric::BudgetUsed, _, Some(_)) => {
                return Err("agent: budget_used watches an account; name it in `account`".into())
            }
            (m, Some(_), _) if m != Metric::BudgetUsed => {
                return Err(format!(
                    "account: only budget_used watches an account, not {}",
                    m.as_str()
                ))
            }
            _ => {}
        }
        if let Some(a) = &self.agent {
            steward_types::AgentName::parse(a).map_err(|e| format!("agent: {}", e.0))?;
        }
        if let Some(a) = &self.account {
            if a.is_empty() || a.len() > 200 {
                return Err("account: a budget account's name".into());
            }
        }
        if let Some(w) = &self.webhook {
            let ok = w.url.len() <= 2048
                && (w.url.starts_with("http://") || w.url.starts_with("https://"))
                && w.url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
            if !ok {
                return Err(format!(
                    "webhook.url: an http or https URL of at most 2048 characters, found {:?}",
                    w.url.chars().take(100).collect::<String>()
                ));
            }
            if w.secret.is_empty() || w.secret.len() > 200 {
                return Err("webhook.secret: the name of a vault secret to sign calls with".into());
            }
        }
        Ok(())
    }
}

/// Nothing measured: too few samples, or no such budget account.
type Measure = Option<f64>;

/// The rule's measure at `now`.
async fn measure(
    store: &dyn Store,
    prices: &steward_llm::Prices,
    spec: &AlertSpec,
    now: i64,
) -> steward_store::Result<Measure> {
    let since = now - i64::from(spec.window_minutes) * 60_000;
    let agent = spec.agent.as_deref();
    Ok(match spec.metric {
        Metric::SpendUsd => {
            let mut rows = store.usage(since).await?;
            if let Some(a) = agent {
                rows.retain(|r| r.agent == a);
            }
            Some(
                costs::report(&rows, prices, CostBy::Agent)
                    .iter()
                    .map(|l| l.cost_usd)
                    .sum(),
            )
        }
        Metric::ErrorRate => {
            let (ended, failed, _) = store.runs_ended_since(since, agent).await?;
            (ended >= i64::from(spec.min_samples)).then(|| failed as f64 / ended as f64)
        }
        Metric::Loops => {
            let (_, _, looped) = store.runs_ended_since(since, agent).await?;
            Some(looped as f64)
        }
        Metric::LatencyMs => {
            let mut d = store.gateway_durations_since(since, agent, 10_000).await?;
            if d.len() < spec.min_samples as usize || d.is_empty() {
                return Ok(None);
            }
            d.sort_unstable();
            let at = ((d.len() as f64) * 0.95).ceil() as usize;
            Some(d[at.clamp(1, d.len()) - 1] as f64 / 1000.0)
        }
        Metric::BudgetUsed => {
            let account = spec.account.as_deref().unwrap_or_default();
            store.get_budget(account).await?.map(|b| {
                if b.cap_nanos <= 0 {
                    1.0
                } else {
                    (b.spent_nanos + b.reserved_nanos) as f64 / b.cap_nanos as f64
                }
            })
        }
    })
}

/// How many times a webhook call is made before it is given up on, and the pauses between.
const MAX_ATTEMPTS: i64 = 8;
const FIRST_PAUSE_MS: i64 = 1_000;
const LONGEST_PAUSE_MS: i64 = 300_000;
/// How long a claimed call may take before another node may make it again.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CLAIM_MS: i64 = 30_000;

/// Checks every rule every `every` and makes the webhook calls due, until `stop`.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    prices: steward_llm::Prices,
    vault: Option<Arc<crate::vault::Vault>>,
    every: Duration,
    stop: CancellationToken,
) {
    let http = match reqwest_mcp::Client::builder().timeout(CALL_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "alerts: no HTTP client; webhooks will not be called");
            return;
        }
    };
    // Webhook calls due are looked for at least every second, whatever the rules' period.
    let tick = every.min(Duration::from_secs(1));
    let mut last_check: Option<std::time::Instant> = None;
    loop {
        if last_check.is_none_or(|t| t.elapsed() >= every) {
            last_check = Some(std::time::Instant::now());
            if let Err(e) = check_all(&*store, &*clock, &prices).await {
                tracing::warn!(error = %e, "alerts: could not check the rules; will retry");
            }
        }
        if let Err(e) = deliver_due(&*store, &*clock, vault.as_deref(), &http).await {
            tracing::warn!(error = %e, "alerts: could not make the webhook calls due; will retry");
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn check_all(
    store: &dyn Store,
    clock: &dyn Clock,
    prices: &steward_llm::Prices,
) -> steward_store::Result<()> {
    for rule in store.list_alerts().await? {
        let spec: AlertSpec = match serde_json::from_str(&rule.spec) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(alert = %rule.name, error = %e, "alerts: a stored rule is unreadable");
                continue;
            }
        };
        let now = clock.now_ms();
        let value = measure(store, prices, &spec, now).await?;
        let above = value.is_some_and(|v| v > spec.above);
        let shown = value.unwrap_or(0.0);
        match (rule.state.as_str(), above) {
            ("ok", true) => fire(store, &rule, &spec, shown, now).await?,
            ("firing", false) => calm(store, &rule, &spec, value, now).await?,
            _ => store.note_alert(&rule.name, shown, now).await?,
        }
    }
    Ok(())
}

fn delivery(
    rule: &AlertRecord,
    spec: &AlertSpec,
    event: &str,
    body: serde_json::Value,
    now: i64,
) -> Option<DeliveryRecord> {
    spec.webhook.as_ref()?;
    let id = format!("dlv_{}", uuid::Uuid::now_v7().simple());
    let mut body = body;
    body["id"] = id.clone().into();
    body["event"] = event.into();
    body["alert"] = rule.name.clone().into();
    body["metric"] = spec.metric.as_str().into();
    body["above"] = spec.above.into();
    body["window_minutes"] = spec.window_minutes.into();
    body["at"] = now.into();
    Some(DeliveryRecord {
        id,
        alert: rule.name.clone(),
        event: event.into(),
        body: body.to_string(),
        state: "pending".into(),
        attempts: 0,
        next_at: now,
        last_error: None,
        created_at: now,
        delivered_at: None,
    })
}

async fn fire(
    store: &dyn Store,
    rule: &AlertRecord,
    spec: &AlertSpec,
    value: f64,
    now: i64,
) -> steward_store::Result<()> {
    let reason = format!(
        "alert {}: {} is {}, above {}{}",
        rule.name,
        spec.metric.as_str(),
        round(value),
        spec.above,
        match spec.metric {
            Metric::BudgetUsed =>
                format!(" (account {})", spec.account.as_deref().unwrap_or_default()),
            _ => format!(" over the last {} min", spec.window_minutes),
        }
    );
    let incident = IncidentRecord {
        id: format!("alert:{}:{now}", rule.name),
        supervisor: format!("alert:{}", rule.name),
        reason: reason.clone(),
        state: "open".into(),
        created_at: now,
        resolved_at: None,
        resolution: None,
    };
    let d = delivery(
        rule,
        spec,
        "alert.firing",
        serde_json::json!({"value": value, "incident": incident.id, "reason": reason}),
        now,
    );
    let fired = store
        .fire_alert(&AlertChange {
            name: &rule.name,
            rule_at: rule.updated_at,
            value,
            now,
            incident: Some(&incident),
            resolution: "",
            delivery: d.as_ref(),
        })
        .await?;
    if fired {
        tracing::warn!(alert = %rule.name, %reason, "alert firing");
    }
    Ok(())
}

async fn calm(
    store: &dyn Store,
    rule: &AlertRecord,
    spec: &AlertSpec,
    value: Measure,
    now: i64,
) -> steward_store::Result<()> {
    let resolution = match value {
        Some(v) => format!(
            "{} fell to {}, at or below {}",
            spec.metric.as_str(),
            round(v),
            spec.above
        ),
        None => format!("{}: nothing left to measure", spec.metric.as_str()),
    };
    let d = delivery(
        rule,
        spec,
        "alert.resolved",
        serde_json::json!({"value": value, "incident": rule.incident_id, "reason": resolution}),
        now,
    );
    let calmed = store
        .calm_alert(&AlertChange {
            name: &rule.name,
            rule_at: rule.updated_at,
            value: value.unwrap_or(0.0),
            now,
            incident: None,
            resolution: &resolution,
            delivery: d.as_ref(),
        })
        .await?;
    if calmed {
        tracing::info!(alert = %rule.name, %resolution, "alert resolved");
    }
    Ok(())
}

fn round(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// `Steward-Signature`'s value for `body` sent at `t` (Unix ms): `t=…,v1=` and the hex
/// HMAC-SHA256 of `"{t}.{body}"` under the secret — the receiver recomputes it and compares,
/// and refuses old `t` to stop replays.
pub fn signature(secret: &[u8], t: i64, body: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Makes the webhook calls due now, one claim at a time, until none is due.
async fn deliver_due(
    store: &dyn Store,
    clock: &dyn Clock,
    vault: Option<&crate::vault::Vault>,
    http: &reqwest_mcp::Client,
) -> steward_store::Result<()> {
    let rules: std::collections::HashMap<String, AlertSpec> = store
        .list_alerts()
        .await?
        .into_iter()
        .filter_map(|r| Some((r.name, serde_json::from_str(&r.spec).ok()?)))
        .collect();
    while let Some(d) = store.claim_delivery(clock.now_ms(), CLAIM_MS).await? {
        let outcome = attempt(&d, rules.get(&d.alert), vault, http, clock).await;
        let now = clock.now_ms();
        let settled = match &outcome {
            Ok(()) => DeliveryOutcome::Delivered,
            Err(e) if d.attempts >= MAX_ATTEMPTS => DeliveryOutcome::GiveUp { error: e },
            Err(e) => {
                let pause = (FIRST_PAUSE_MS << (d.attempts - 1).clamp(0, 20)).min(LONGEST_PAUSE_MS);
                DeliveryOutcome::Retry {
                    at: now + pause,
                    error: e,
                }
            }
        };
        if let Err(e) = &outcome {
            tracing::warn!(alert = %d.alert, delivery = %d.id, attempt = d.attempts, error = %e, "alerts: a webhook call failed");
        }
        store.settle_delivery(&d.id, settled, now).await?;
    }
    Ok(())
}

async fn attempt(
    d: &DeliveryRecord,
    spec: Option<&AlertSpec>,
    vault: Option<&crate::vault::Vault>,
    http: &reqwest_mcp::Client,
    clock: &dyn Clock,
) -> Result<(), String> {
    let hook = spec
        .and_then(|s| s.webhook.as_ref())
        .ok_or("the rule has no webhook any more")?;
    let secret = vault
        .and_then(|v| steward_llm::SecretSource::secret(v, &hook.secret))
        .ok_or_else(|| format!("vault secret {:?} is not set", hook.secret))?;
    let t = clock.now_ms();
    let r = http
        .post(&hook.url)
        .header("content-type", "application/json")
        .header(
            "steward-signature",
            signature(secret.as_bytes(), t, &d.body),
        )
        .header("steward-delivery", &d.id)
        .header("steward-event", &d.event)
        .body(d.body.clone())
        .send()
        .await
        .map_err(|e| format!("the call failed: {e}"))?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered {}", r.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<AlertSpec, String> {
        let s: AlertSpec = serde_json::from_value(json).map_err(|e| e.to_string())?;
        s.check().map(|()| s)
    }

    #[test]
    fn rules_are_checked_before_they_are_kept() {
        assert!(spec(serde_json::json!({"metric": "spend_usd", "above": 5})).is_ok());
        for (bad, says) in [
            (
                serde_json::json!({"metric": "spend_usd", "above": -1}),
                "above",
            ),
            (
                serde_json::json!({"metric": "error_rate", "above": 2}),
                "share",
            ),
            (
                serde_json::json!({"metric": "budget_used", "above": 0.5}),
                "account",
            ),
            (
                serde_json::json!({"metric": "loops", "above": 0, "account": "org"}),
                "account",
            ),
            (
                serde_json::json!({"metric": "loops", "above": 0, "window_minutes": 0}),
                "window_minutes",
            ),
            (
                serde_json::json!({"metric": "loops", "above": 0, "agent": "Not A Name"}),
                "agent",
            ),
            (
                serde_json::json!({"metric": "loops", "above": 0, "webhook": {"url": "ftp://x", "secret": "s"}}),
                "webhook.url",
            ),
            (
                serde_json::json!({"metric": "loops", "above": 0, "webhook": {"url": "http://x", "secret": ""}}),
                "webhook.secret",
            ),
            (
                serde_json::json!({"metric": "latency", "above": 0}),
                "unknown variant",
            ),
            (
                serde_json::json!({"metric": "loops", "above": 0, "extra": 1}),
                "unknown field",
            ),
        ] {
            let e = spec(bad.clone()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_signature_is_the_hmac_of_the_time_and_body() {
        // Computed apart, with Python's hmac: HMAC-SHA256("Jefe", "1700000000000.{\"a\":1}").
        assert_eq!(
            signature(b"Jefe", 1_700_000_000_000, r#"{"a":1}"#),
            "t=1700000000000,v1=2e2c3965aaac4895200c348195276213e958abd6dce3b8dc194223735af4bc81"
        );
        assert_ne!(
            signature(b"Jefe", 0, "a"),
            signature(b"Jefe", 1, "a"),
            "the time is signed"
        );
        assert_ne!(signature(b"Jefe", 0, "a"), signature(b"other", 0, "a"));
    }
}
