//! The router: one code path for every model call, the gateway's and the managed loop's. A model
//! name resolves to deployments in priority order; each call tries them in turn, retrying
//! transient failures (backoff with jitter, or `Retry-After`) while the deployment's circuit
//! stays closed, and skipping deployments whose circuit is open. Every attempt is bounded.

use std::time::{Duration, Instant};

use steward_types::config::LlmConfig;

use steward_types::config::Strategy;

use crate::resilience::{retry_delay, Breakers};
use crate::{ChatRequest, ChatResponse, Deployment, Error, Failure, Plan, Providers, Result};

/// A retry that would wait longer than this falls back to the next deployment instead.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

pub struct Router {
    providers: Providers,
    prices: crate::Prices,
    /// Recent latency per deployment label, in milliseconds (EWMA).
    latency: std::sync::Mutex<std::collections::HashMap<String, f64>>,
    breakers: Breakers,
    retries: u32,
    retry_base: Duration,
    timeout: Duration,
}

impl Router {
    pub fn new(providers: Providers, prices: crate::Prices, cfg: &LlmConfig) -> Self {
        Router {
            providers,
            prices,
            latency: Default::default(),
            breakers: Breakers::new(
                cfg.breaker_failures,
                Duration::from_millis(cfg.breaker_cooldown_ms),
            ),
            retries: cfg.retries,
            retry_base: Duration::from_millis(cfg.retry_base_ms),
            timeout: Duration::from_millis(cfg.timeout_ms),
        }
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// Where a model name goes, in the order to try: the route's strategy picks who goes
    /// first (`seed` makes a weighted pick reproducible), the rest follow as fallbacks.
    pub fn deployments(&self, model: &str, seed: &str) -> Result<Vec<Deployment>> {
        let mut ds = self.providers.deployments(model)?;
        let Some(route) = self.providers.route(model) else {
            return Ok(ds);
        };
        match route.strategy {
            Strategy::Priority => {}
            Strategy::Weighted => {
                let total: u64 = route.weights.iter().map(|w| u64::from(*w)).sum();
                if total > 0 {
                    let mut pick = hash(seed) % total;
                    let first = route
                        .weights
                        .iter()
                        .position(|w| {
                            let w = u64::from(*w);
                            if pick < w {
                                true
                            } else {
                                pick -= w;
                                false
                            }
                        })
                        .unwrap_or(0);
                    let d = ds.remove(first);
                    ds.insert(0, d);
                }
            }
            Strategy::Latency => {
                let lat = self.latency.lock().map(|l| l.clone()).unwrap_or_default();
                // Unmeasured deployments go first, so each gets measured.
                ds.sort_by(|a, b| {
                    let la = lat.get(&a.label).copied().unwrap_or(0.0);
                    let lb = lat.get(&b.label).copied().unwrap_or(0.0);
                    la.total_cmp(&lb)
                });
            }
            Strategy::Cost => {
                let price = |d: &Deployment| {
                    self.prices
                        .get(&d.label)
                        .map_or(f64::INFINITY, |p| p.input + p.output)
                };
                ds.sort_by(|a, b| price(a).total_cmp(&price(b)));
            }
        }
        Ok(ds)
    }

    fn observe(&self, label: &str, elapsed: Duration) {
        if let Ok(mut l) = self.latency.lock() {
            let ms = elapsed.as_secs_f64() * 1000.0;
            let e = l.entry(label.to_string()).or_insert(ms);
            *e = 0.8 * *e + 0.2 * ms;
        }
    }

    /// Where a request for `model` goes: [`Router::deployments`] and the route's fallback
    /// chains by failure kind.
    pub fn plan(&self, model: &str, seed: &str) -> Result<Plan> {
        let (context_window, content_filter) = self.providers.fallbacks(model)?;
        Ok(Plan {
            deployments: self.deployments(model, seed)?,
            context_window,
            content_filter,
        })
    }

    /// Runs `act` against the plan's deployments until one succeeds. A transient failure is
    /// retried on the same deployment, then the next is tried; a prompt too long for the
    /// context window, or a content-filter refusal, moves to that kind's fallback chain (each
    /// chain taken at most once). `refused` recognises an answer that is itself a refusal
    /// (`finish_reason: content_filter`): it moves on to the content-filter chain when one is
    /// left, and is returned as it is otherwise. `seed` (e.g. the call's id) spreads retry
    /// jitter between calls.
    pub async fn run<'d, T, F, Fut>(
        &self,
        seed: &str,
        plan: &'d Plan,
        refused: impl Fn(&T) -> bool,
        act: F,
    ) -> Result<(T, &'d Deployment)>
    where
        F: Fn(&'d Deployment) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let seed = hash(seed);
        let mut chain: (Failure, &'d [Deployment]) = (Failure::Transient, &plan.deployments);
        let mut taken: Vec<Failure> = Vec::new();
        let mut next = 0;
        let mut last: Option<Error> = None;
        let mut last_refusal: Option<(T, &'d Deployment)> = None;
        // Switches to the fallback chain for `kind`, if the plan has one not yet taken.
        let mut fall_back = |kind: Failure, chain: &mut (Failure, &'d [Deployment])| {
            let list = match kind {
                Failure::ContextWindow => &plan.context_window,
                Failure::ContentFilter => &plan.content_filter,
                _ => return false,
            };
            if list.is_empty() || taken.contains(&kind) {
                return false;
            }
            taken.push(kind);
            *chain = (kind, list);
            tracing::info!(?kind, "falling back to the route's chain for this failure");
            true
        };
        while let Some(d) = chain.1.get(next) {
            next += 1;
            if !self.breakers.allow(&d.label, Instant::now()) {
                tracing::info!(deployment = %d.label, "skipped: its circuit is open");
                continue;
            }
            let failure = match self.attempt(seed, d, &act).await {
                Ok(v) if refused(&v) => {
                    last_refusal = Some((v, d));
                    Failure::ContentFilter
                }
                Ok(v) => return Ok((v, d)),
                Err(e) => {
                    let kind = e.failure();
                    last = Some(e);
                    kind
                }
            };
            match failure {
                Failure::Transient => {}
                // Within a chain for this very failure, the next deployment may fit.
                kind if kind == chain.0 => {}
                kind => {
                    if fall_back(kind, &mut chain) {
                        next = 0;
                    } else if kind == Failure::ContentFilter && last_refusal.is_some() {
                        break;
                    } else {
                        return Err(
                            last.unwrap_or_else(|| Error::Unavailable("the request failed".into()))
                        );
                    }
                }
            }
        }
        if let Some(r) = last_refusal {
            return Ok(r);
        }
        Err(last.unwrap_or_else(|| {
            Error::Unavailable("every deployment of this model is failing and was skipped (circuits open); try again shortly".into())
        }))
    }

    /// One deployment: `act`, bounded by the timeout, retried while the failure is transient,
    /// retries remain, and the deployment's circuit stays closed.
    async fn attempt<'d, T, F, Fut>(&self, seed: u64, d: &'d Deployment, act: &F) -> Result<T>
    where
        F: Fn(&'d Deployment) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let r = match tokio::time::timeout(self.timeout, act(d)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout {
                    provider: d.label.clone(),
                    timeout_ms: self.timeout.as_millis() as u64,
                }),
            };
            match r {
                Ok(v) => {
                    self.breakers.success(&d.label);
                    self.observe(&d.label, started.elapsed());
                    return Ok(v);
                }
                Err(e) if e.is_transient() => {
                    self.breakers.failure(&d.label, Instant::now());
                    let delay = retry_delay(attempt, self.retry_base, e.retry_after(), seed);
                    let retry = attempt < self.retries
                        && delay <= MAX_RETRY_WAIT
                        && self.breakers.allow(&d.label, Instant::now());
                    tracing::warn!(deployment = %d.label, error = %e, retry, "deployment failed");
                    if !retry {
                        return Err(e);
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A neutral chat call through the route `model` names (an alias or `provider/model`).
    /// Returns the answer and the label of the deployment that gave it.
    pub async fn chat(
        &self,
        seed: &str,
        model: &str,
        req: &ChatRequest,
    ) -> Result<(ChatResponse, String)> {
        let plan = self.plan(model, seed)?;
        self.chat_planned(seed, &plan, req).await
    }

    /// A neutral chat call through a plan the caller made (and may have narrowed).
    pub async fn chat_planned(
        &self,
        seed: &str,
        plan: &Plan,
        req: &ChatRequest,
    ) -> Result<(ChatResponse, String)> {
        let (r, d) = self
            .run(
                seed,
                plan,
                |_| false,
                |d| {
                    let mut req = req.clone();
                    req.model = d.model.clone();
                    async move { d.provider.chat(&req).await }
                },
            )
            .await?;
        Ok((r, d.label.clone()))
    }
}

/// FNV-1a: a stable spread of a seed string.
fn hash(seed: &str) -> u64 {
    seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_types::config::{Price, ProviderConfig, ProviderKind, RouteConfig};

    fn router(strategy: Strategy, weights: Vec<u32>) -> Router {
        let mut cfg = LlmConfig::default();
        for p in ["a", "b", "c"] {
            cfg.providers.insert(
                p.into(),
                ProviderConfig {
                    kind: ProviderKind::Openai,
                    base_url: "http://127.0.0.1:1".into(),
                    api_key_env: None,
                    api_key_secret: None,
                    timeout_ms: None,
                    responses_api: false,
                },
            );
        }
        cfg.routes.insert(
            "r".into(),
            RouteConfig {
                deployments: vec!["a/m".into(), "b/m".into(), "c/m".into()],
                strategy,
                weights,
                cache_ttl_ms: None,
                cache_sampled: false,
                context_window_fallbacks: vec![],
                content_filter_fallbacks: vec![],
            },
        );
        let mut prices = std::collections::BTreeMap::new();
        prices.insert(
            "a/m".to_string(),
            Price {
                input: 3.0,
                output: 3.0,
                cached_input: None,
            },
        );
        prices.insert(
            "b/m".to_string(),
            Price {
                input: 1.0,
                output: 1.0,
                cached_input: None,
            },
        );
        let providers = Providers::from_config(&cfg, |_| None).unwrap();
        Router::new(providers, crate::Prices::new(&prices).unwrap(), &cfg)
    }

    fn first(r: &Router, seed: &str) -> String {
        r.deployments("r", seed).unwrap()[0].label.clone()
    }

    #[test]
    fn strategies_choose_who_goes_first() {
        assert_eq!(first(&router(Strategy::Priority, vec![]), "x"), "a/m");
        let cost = router(Strategy::Cost, vec![]);
        let order: Vec<String> = cost
            .deployments("r", "x")
            .unwrap()
            .into_iter()
            .map(|d| d.label)
            .collect();
        assert_eq!(
            order,
            ["b/m", "a/m", "c/m"],
            "cheapest first, unpriced last"
        );
        let lat = router(Strategy::Latency, vec![]);
        lat.observe("a/m", Duration::from_millis(50));
        lat.observe("b/m", Duration::from_millis(5));
        lat.observe("c/m", Duration::from_millis(20));
        assert_eq!(first(&lat, "x"), "b/m");
        let weighted = router(Strategy::Weighted, vec![1, 0, 3]);
        let mut counts = std::collections::HashMap::new();
        for i in 0..4000 {
            *counts
                .entry(first(&weighted, &format!("call_{i}")))
                .or_insert(0) += 1;
        }
        assert_eq!(counts.get("b/m"), None, "weight 0 is never first");
        let c = counts["c/m"] as f64 / 4000.0;
        assert!(
            (0.70..0.80).contains(&c),
            "c/m first {c} of the time, expected 0.75"
        );
    }

    #[test]
    fn bad_weights_are_refused() {
        let mut cfg = LlmConfig::default();
        cfg.providers.insert(
            "a".into(),
            ProviderConfig {
                kind: ProviderKind::Openai,
                base_url: "http://x".into(),
                api_key_env: None,
                api_key_secret: None,
                timeout_ms: None,
                responses_api: false,
            },
        );
        cfg.routes.insert(
            "r".into(),
            RouteConfig {
                deployments: vec!["a/m".into()],
                strategy: Strategy::Weighted,
                weights: vec![],
                cache_ttl_ms: None,
                cache_sampled: false,
                context_window_fallbacks: vec![],
                content_filter_fallbacks: vec![],
            },
        );
        assert!(Providers::from_config(&cfg, |_| None)
            .err()
            .unwrap()
            .to_string()
            .contains("weights"));
    }

    #[test]
    fn only_an_openai_provider_serves_the_responses_api() {
        let provider = |kind, responses_api| {
            let mut cfg = LlmConfig::default();
            cfg.providers.insert(
                "a".into(),
                ProviderConfig {
                    kind,
                    base_url: "http://x".into(),
                    api_key_env: None,
                    api_key_secret: None,
                    timeout_ms: None,
                    responses_api,
                },
            );
            Providers::from_config(&cfg, |_| None)
                .map(|p| p.deployments("a/m").unwrap().remove(0).provider)
        };
        let e = provider(ProviderKind::Anthropic, true).err().unwrap();
        assert!(e.to_string().contains("responses_api"), "{e}");
        let speaks = |p: std::sync::Arc<dyn crate::Provider>| {
            (
                p.speaks(crate::NativeApi::Responses),
                p.speaks(crate::NativeApi::Messages),
            )
        };
        assert_eq!(
            speaks(provider(ProviderKind::Openai, true).unwrap()),
            (true, false)
        );
        assert_eq!(
            speaks(provider(ProviderKind::Openai, false).unwrap()),
            (false, false)
        );
        assert_eq!(
            speaks(provider(ProviderKind::Anthropic, false).unwrap()),
            (false, true)
        );
    }
}
