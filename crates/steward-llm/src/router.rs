//! The router: one code path for every model call, the gateway's and the managed loop's. A model
//! name resolves to deployments in priority order; each call tries them in turn, retrying
//! transient failures (backoff with jitter, or `Retry-After`) while the deployment's circuit
//! stays closed, and skipping deployments whose circuit is open. Every attempt is bounded.

use std::time::{Duration, Instant};

use steward_types::config::LlmConfig;

use crate::resilience::{retry_delay, Breakers};
use crate::{ChatRequest, ChatResponse, Deployment, Error, Providers, Result};

/// A retry that would wait longer than this falls back to the next deployment instead.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

pub struct Router {
    providers: Providers,
    breakers: Breakers,
    retries: u32,
    retry_base: Duration,
    timeout: Duration,
}

impl Router {
    pub fn new(providers: Providers, cfg: &LlmConfig) -> Self {
        Router {
            providers,
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

    /// Where a model name goes (see `Providers::deployments`).
    pub fn deployments(&self, model: &str) -> Result<Vec<Deployment>> {
        self.providers.deployments(model)
    }

    /// Runs `act` against the deployments until one succeeds. `seed` (e.g. the call's id)
    /// spreads retry jitter between calls.
    pub async fn run<'d, T, F, Fut>(
        &self,
        seed: &str,
        deployments: &'d [Deployment],
        act: F,
    ) -> Result<(T, &'d Deployment)>
    where
        F: Fn(&'d Deployment) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let seed = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let mut last: Option<Error> = None;
        for d in deployments {
            if !self.breakers.allow(&d.label, Instant::now()) {
                tracing::info!(deployment = %d.label, "skipped: its circuit is open");
                continue;
            }
            let mut attempt = 0;
            loop {
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
                        return Ok((v, d));
                    }
                    Err(e) if e.is_transient() => {
                        self.breakers.failure(&d.label, Instant::now());
                        let delay = retry_delay(attempt, self.retry_base, e.retry_after(), seed);
                        let retry = attempt < self.retries
                            && delay <= MAX_RETRY_WAIT
                            && self.breakers.allow(&d.label, Instant::now());
                        tracing::warn!(deployment = %d.label, error = %e, retry, "deployment failed");
                        last = Some(e);
                        if !retry {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    // The request itself is at fault: another deployment would refuse it too.
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::Unavailable("every deployment of this model is failing and was skipped (circuits open); try again shortly".into())
        }))
    }

    /// A neutral chat call through the route `model` names (an alias or `provider/model`).
    pub async fn chat(&self, seed: &str, model: &str, req: &ChatRequest) -> Result<ChatResponse> {
        let deployments = self.deployments(model)?;
        let (r, _) = self
            .run(seed, &deployments, |d| {
                let mut req = req.clone();
                req.model = d.model.clone();
                async move { d.provider.chat(&req).await }
            })
            .await?;
        Ok(r)
    }
}
