//! Agents: manifests applied all or nothing, and their versions.

use crate::*;

/// `Engine::agents()`.
pub struct Agents<'a>(pub(crate) &'a Engine);

impl Agents<'_> {
    pub fn tool_names(&self) -> Vec<String> {
        self.0.inner.kernel.tools.names()
    }

    /// Creates or updates every agent in a YAML/JSON manifest stream, all or nothing.
    pub async fn apply(&self, text: &str) -> Result<Vec<Applied>> {
        Ok(self.apply_documents(text).await?.0)
    }

    /// Applies agents (`kind: Agent`), then supervisors (`kind: Supervisor`, which may name
    /// those agents); returns the agents and the names of the supervisors applied.
    pub async fn apply_documents(&self, text: &str) -> Result<(Vec<Applied>, Vec<String>)> {
        let (manifests, supervisors) =
            parse_documents(text).map_err(|e| Error::InvalidManifest(e.0))?;
        let mut specs = Vec::with_capacity(supervisors.len());
        for s in &supervisors {
            let spec: supervisors::SupervisorSpec = serde_json::from_value(s.spec.clone())
                .map_err(|e| Error::InvalidManifest(format!("{}: spec: {e}", s.name)))?;
            specs.push((s.name.clone(), spec));
        }
        let agents = self.apply_agents(manifests).await?;
        let mut names = Vec::with_capacity(specs.len());
        for (name, spec) in specs {
            self.0
                .supervisors()
                .put(&name, spec)
                .await
                .map_err(|e| match e {
                    OrchestrateError::InvalidRequest(m) | OrchestrateError::NotFound(m) => {
                        Error::InvalidManifest(format!("{name}: {m}"))
                    }
                    other => other.into(),
                })?;
            names.push(name);
        }
        Ok((agents, names))
    }

    async fn apply_agents(
        &self,
        manifests: Vec<steward_types::AgentManifest>,
    ) -> Result<Vec<Applied>> {
        if manifests.is_empty() {
            return Ok(Vec::new());
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut new = Vec::with_capacity(manifests.len());
        for m in &manifests {
            let name = &m.metadata.name;
            if !seen.insert(name.clone()) {
                return Err(Error::InvalidManifest(format!(
                    "metadata.name: {name} appears twice in one apply"
                )));
            }
            self.check_spec(name, &m.spec)?;
            let spec_json = serde_json::to_string(&m.spec)
                .map_err(|e| Error::InvalidManifest(e.to_string()))?;
            let spec_hash = hex::encode(Sha256::digest(spec_json.as_bytes()));
            new.push(NewAgent {
                name: name.clone(),
                spec_json,
                spec_hash,
            });
        }
        let now = self.0.inner.shared.clock.now_ms();
        let stored = self.0.store().put_agents(&new, now).await?;
        Ok(stored
            .into_iter()
            .map(|(agent, changed)| Applied { agent, changed })
            .collect())
    }

    fn check_spec(&self, name: &AgentName, spec: &AgentSpec) -> Result<()> {
        self.0
            .inner
            .kernel
            .router
            .providers()
            .check_route(spec)
            .map_err(|e| Error::InvalidManifest(format!("{name}: spec.model: {e}")))?;
        if let Some(sb) = &spec.sandbox {
            steward_sandbox::egress::AllowList::parse(&sb.egress)
                .map_err(|e| Error::InvalidManifest(format!("{name}: spec.sandbox: {e}")))?;
        }
        if let Some(t) = &spec.tasks {
            tasks::check_name("queue", &t.queue)
                .map_err(|e| Error::InvalidManifest(format!("{name}: spec.tasks: {e}")))?;
            if !(1..=1000).contains(&t.concurrency) {
                return Err(Error::InvalidManifest(format!(
                    "{name}: spec.tasks.concurrency: from 1 to 1000"
                )));
            }
            if t.max_concurrency
                .is_some_and(|m| m < t.concurrency || m > 1000)
            {
                return Err(Error::InvalidManifest(format!(
                    "{name}: spec.tasks.maxConcurrency: from concurrency to 1000"
                )));
            }
            if t.tasks_per_run == 0 {
                return Err(Error::InvalidManifest(format!(
                    "{name}: spec.tasks.tasksPerRun: at least 1"
                )));
            }
        }
        for (i, t) in spec.tools.iter().enumerate() {
            // A name with a `.` is an upstream MCP server's (`github.create_issue`, or
            // `github.*` for all it offers): resolved when a run starts, as the server may be
            // starting, restarting or not added yet.
            if !t.contains('.') && self.0.inner.kernel.tools.get(t).is_none() {
                return Err(Error::InvalidManifest(format!(
                    "{name}: spec.tools[{i}]: no tool named {t:?}; available: {}",
                    self.tool_names().join(", ")
                )));
            }
        }
        Ok(())
    }

    pub async fn get(&self, name: &str, version: Option<i64>) -> Result<AgentRecord> {
        let n = AgentName::parse(name).map_err(|e| Error::InvalidRequest(e.0))?;
        self.0.store().get_agent(&n, version).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "no agent named {name:?}{}",
                version
                    .map(|v| format!(" at version {v}"))
                    .unwrap_or_default()
            ))
        })
    }

    pub async fn list(&self) -> Result<Vec<AgentRecord>> {
        Ok(self.0.store().list_agents().await?)
    }
}
