//! The merge queue for agents' parallel work on git repositories. Agents submit branches; a
//! submission that conflicts with the target already is refused at once (`git merge-tree`).
//! Submissions are checked one at a time per repository, in order: rebased onto the target as
//! it is then — each commit replayed with `git merge-tree`, or one merge commit where the
//! repository asks for `merge` — so each is checked on top of the ones that landed before it;
//! the repository's check command run on the result in a sandbox (a plain subprocess where
//! sandboxes are off), and landed with a compare-and-set of the target ref — or reported
//! `conflict` (routed to the resolver agent or a human) or `failed` (with the check's output).
//! Path leases let agents claim files before they start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use steward_store::{AgentStore, MergeStore, SupervisorStore};

use steward_store::{IncidentRecord, PathLease, RepoRecord, Store, SubmissionRecord};

use crate::tasks::check_name;
use crate::{Error, Result};
use steward_types::clock::Clock;

/// A check that could not run this many times (git or the sandbox failing, not the check
/// itself) is failed, so the submissions behind it move on.
const MAX_CHECK_ATTEMPTS: i64 = 3;
/// Bound on one git command.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct MergeQueue {
    merges: Arc<dyn MergeStore>,
    agents: Arc<dyn AgentStore>,
    incidents: Arc<dyn SupervisorStore>,
    launch: Arc<dyn crate::Launch>,
    clock: Arc<dyn Clock>,
    sandboxes: Option<Arc<dyn crate::Isolated>>,
    /// Repositories this node is checking a submission of right now.
    busy: std::sync::Mutex<std::collections::HashSet<String>>,
    /// This node: a check is leased to it, renewed while it runs, for `lease` at a time.
    node: String,
    lease: Duration,
    renew_every: Duration,
}

/// What a check came to: the submission's end state, what happened, where the target is.
type Checked = (&'static str, String, Option<String>);

async fn git(repo: &Path, args: &[&str]) -> Result<(bool, String)> {
    git_as(repo, args, None).await
}

/// The author of a commit being replayed: name, email, date.
type Author = (String, String, String);

/// Runs git; commits it makes are committed by the merge queue and authored by `author`, or
/// by the merge queue too.
async fn git_as(repo: &Path, args: &[&str], author: Option<&Author>) -> Result<(bool, String)> {
    let queue = ("Steward merge queue", "merge-queue@steward.invalid");
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_AUTHOR_NAME", author.map_or(queue.0, |a| &a.0))
        .env("GIT_AUTHOR_EMAIL", author.map_or(queue.1, |a| &a.1))
        .env("GIT_COMMITTER_NAME", queue.0)
        .env("GIT_COMMITTER_EMAIL", queue.1)
        .kill_on_drop(true);
    if let Some(a) = author {
        cmd.env("GIT_AUTHOR_DATE", &a.2);
    }
    let run = cmd.output();
    let out = tokio::time::timeout(GIT_TIMEOUT, run)
        .await
        .map_err(|_| Error::Unavailable(format!("git {}: timed out", args.join(" "))))?
        .map_err(|e| Error::Unavailable(format!("running git: {e}")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

async fn rev(repo: &Path, name: &str) -> Result<Option<String>> {
    let (ok, out) = git(
        repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{name}^{{commit}}"),
        ],
    )
    .await?;
    Ok(ok.then(|| out.trim().to_string()))
}

/// Branch names as git takes them, and nothing a command line could mistake for an option.
fn check_branch(branch: &str) -> Result<()> {
    let ok = !branch.is_empty()
        && branch.len() <= 200
        && !branch.starts_with('-')
        && !branch.contains("..")
        && branch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "branch {branch:?}: 1 to 200 of a-z A-Z 0-9 - _ . /, not starting with -"
        )))
    }
}

/// What merging `branch` onto `target` gives: the tree, or the conflicting paths.
enum Merged {
    Tree(String),
    Conflicts(Vec<String>),
}

async fn merge_tree(repo: &Path, target: &str, branch: &str) -> Result<Merged> {
    merge_tree_from(repo, None, target, branch).await
}

/// As `merge_tree`, with the merge base given (`None`: git finds it).
async fn merge_tree_from(
    repo: &Path,
    base: Option<&str>,
    target: &str,
    branch: &str,
) -> Result<Merged> {
    let base = base.map(|b| format!("--merge-base={b}"));
    let mut args = vec!["merge-tree", "--write-tree", "--name-only"];
    args.extend(base.as_deref());
    args.extend([target, branch]);
    let (ok, out) = git(repo, &args).await?;
    let mut lines = out.lines();
    let tree = lines.next().unwrap_or_default().trim().to_string();
    if ok {
        return Ok(Merged::Tree(tree));
    }
    if tree.len() != 40 && tree.len() != 64 {
        return Err(Error::Unavailable(format!(
            "git merge-tree: {}",
            out.trim()
        )));
    }
    // After the tree: the conflicting paths, a blank line, then messages.
    let paths = lines
        .take_while(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    Ok(Merged::Conflicts(paths))
}

/// What replaying a branch onto the target gives.
enum Rebased {
    /// The new tip (the target itself when nothing was left to replay).
    Tip(String),
    /// A commit that does not apply, and the paths in conflict.
    Conflict { commit: String, paths: Vec<String> },
    /// Why this branch cannot be rebased at all.
    Refused(String),
}

/// Replays the commits of `head` that `base` lacks onto `base`, oldest first, as `git rebase`
/// does: merge commits left out, a commit whose change the target has already dropped, each
/// keeping its author and message. Nothing is checked out: each step is a `git merge-tree`
/// of the commit against its parent, onto the tip so far.
async fn rebase(repo: &Path, base: &str, head: &str) -> Result<Rebased> {
    let range = format!("{base}..{head}");
    let (ok, list) = git(
        repo,
        &[
            "rev-list",
            "--reverse",
            "--topo-order",
            "--no-merges",
            &range,
        ],
    )
    .await?;
    if !ok {
        return Err(Error::Unavailable(format!("git rev-list: {}", list.trim())));
    }
    let mut onto = base.to_string();
    for commit in list.split_whitespace() {
        let Some(parent) = rev(repo, &format!("{commit}^")).await? else {
            return Ok(Rebased::Refused(format!(
                "commit {commit} has no parent: a branch with its own history cannot be rebased (use strategy merge)"
            )));
        };
        let tree = match merge_tree_from(repo, Some(&parent), &onto, commit).await? {
            Merged::Tree(t) => t,
            Merged::Conflicts(paths) => {
                return Ok(Rebased::Conflict {
                    commit: commit.to_string(),
                    paths,
                })
            }
        };
        if rev_tree(repo, &onto).await? == tree {
            continue; // its change is on the target already
        }
        let (ok, meta) = git(
            repo,
            &["log", "-1", "--format=%an%x00%ae%x00%aI%x00%B", commit],
        )
        .await?;
        let mut parts = meta.splitn(4, '\0');
        let (Some(name), Some(email), Some(date), Some(message), true) =
            (parts.next(), parts.next(), parts.next(), parts.next(), ok)
        else {
            return Err(Error::Unavailable(format!(
                "git log {commit}: {}",
                meta.trim()
            )));
        };
        let author = (name.to_string(), email.to_string(), date.to_string());
        let message = message.trim_end();
        let (ok, out) = git_as(
            repo,
            &["commit-tree", &tree, "-p", &onto, "-m", message],
            Some(&author),
        )
        .await?;
        if !ok {
            return Err(Error::Unavailable(format!(
                "git commit-tree: {}",
                out.trim()
            )));
        }
        onto = out.trim().to_string();
    }
    Ok(Rebased::Tip(onto))
}

/// Whether `commit` is in the history of `of`.
async fn is_ancestor(repo: &Path, commit: &str, of: &str) -> Result<bool> {
    let (ok, out) = git(repo, &["merge-base", "--is-ancestor", commit, of]).await?;
    // Exit 1 is "no"; anything else git prints is an error.
    if !ok && !out.trim().is_empty() {
        return Err(Error::Unavailable(format!(
            "git merge-base: {}",
            out.trim()
        )));
    }
    Ok(ok)
}

/// Removes whatever a check that died left at `dir`: the worktree, its files, and git's
/// record of it.
async fn clear_worktree(repo: &Path, dir: &Path) -> Result<()> {
    let dir_s = dir.display().to_string();
    if dir.exists() {
        let _ = git(repo, &["worktree", "remove", "--force", &dir_s]).await?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| {
                Error::Unavailable(format!("removing the check's leftover {dir_s}: {e}"))
            })?;
        }
    }
    let (ok, out) = git(repo, &["worktree", "prune"]).await?;
    if !ok {
        return Err(Error::Unavailable(format!(
            "git worktree prune: {}",
            out.trim()
        )));
    }
    Ok(())
}

async fn rev_tree(repo: &Path, commit: &str) -> Result<String> {
    let (ok, out) = git(repo, &["rev-parse", &format!("{commit}^{{tree}}")]).await?;
    if !ok {
        return Err(Error::Unavailable(format!("git rev-parse: {}", out.trim())));
    }
    Ok(out.trim().to_string())
}

impl MergeQueue {
    /// Checks are leased to `node` for `lease`, renewed every `renew_every` (the engine's run
    /// lease and heartbeat).
    pub fn new(
        store: Arc<dyn Store>,
        launch: Arc<dyn crate::Launch>,
        clock: Arc<dyn Clock>,
        sandboxes: Option<Arc<dyn crate::Isolated>>,
        node: &steward_types::NodeId,
        lease: Duration,
        renew_every: Duration,
    ) -> Self {
        MergeQueue {
            merges: store.clone(),
            agents: store.clone(),
            incidents: store.clone(),
            launch,
            clock,
            sandboxes,
            busy: Default::default(),
            node: node.to_string(),
            lease,
            renew_every,
        }
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    pub async fn put_repo(&self, r: RepoRecord) -> Result<RepoRecord> {
        check_name("repository", &r.name)?;
        check_branch(&r.target)?;
        if let Some(a) = &r.resolver {
            let name =
                steward_types::AgentName::parse(a).map_err(|e| Error::InvalidRequest(e.0))?;
            if self.agents.get_agent(&name, None).await?.is_none() {
                return Err(Error::NotFound(format!("resolver: no agent {a}")));
            }
        }
        if !matches!(r.strategy.as_str(), "rebase" | "merge") {
            return Err(Error::InvalidRequest(format!(
                "strategy {:?}: rebase or merge",
                r.strategy
            )));
        }
        if r.check_cmd.trim().is_empty() || r.check_cmd.len() > 4096 {
            return Err(Error::InvalidRequest("check: 1 to 4096 bytes".into()));
        }
        let path = Path::new(&r.path);
        if !path.is_absolute() {
            return Err(Error::InvalidRequest("path: an absolute path".into()));
        }
        if rev(path, &format!("refs/heads/{}", r.target))
            .await?
            .is_none()
        {
            return Err(Error::InvalidRequest(format!(
                "{}: not a git repository with a branch {:?}",
                r.path, r.target
            )));
        }
        self.merges.put_repo(&r, self.clock.now_ms()).await?;
        Ok(r)
    }

    pub async fn repo(&self, name: &str) -> Result<RepoRecord> {
        self.merges
            .get_repo(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no repository {name}")))
    }

    pub async fn repos(&self) -> Result<Vec<RepoRecord>> {
        Ok(self.merges.list_repos().await?)
    }

    /// Queues `branch` to land on `repo`'s target — or, when it conflicts with the target
    /// already, records it as `conflict` with the paths at once.
    pub async fn submit(
        &self,
        repo: &str,
        branch: &str,
        submitter: &str,
    ) -> Result<SubmissionRecord> {
        let r = self.repo(repo).await?;
        check_branch(branch)?;
        check_name("submitter", submitter)?;
        let path = Path::new(&r.path);
        if rev(path, &format!("refs/heads/{branch}")).await?.is_none() {
            return Err(Error::InvalidRequest(format!(
                "no branch {branch:?} in {repo}"
            )));
        }
        let now = self.clock.now_ms();
        let (state, detail) = match merge_tree(
            path,
            &format!("refs/heads/{}", r.target),
            &format!("refs/heads/{branch}"),
        )
        .await?
        {
            Merged::Tree(_) => ("queued", None),
            Merged::Conflicts(paths) => (
                "conflict",
                Some(format!("conflicts with {}: {}", r.target, paths.join(", "))),
            ),
        };
        let s = SubmissionRecord {
            id: format!("sub_{}", uuid::Uuid::now_v7().simple()),
            repo: repo.to_string(),
            branch: branch.to_string(),
            submitter: submitter.to_string(),
            state: state.into(),
            detail,
            merged: None,
            created_at: now,
            updated_at: now,
            attempts: 0,
        };
        let mut s = s;
        if let (true, Some(d)) = (s.state == "conflict", s.detail.clone()) {
            s.detail = Some(format!("{d}{}", self.route_conflict(&r, &s, &d).await));
        }
        self.merges.add_submission(&s).await?;
        Ok(s)
    }

    pub async fn submissions(&self, repo: &str) -> Result<Vec<SubmissionRecord>> {
        self.repo(repo).await?;
        Ok(self.merges.list_submissions(repo).await?)
    }

    /// Sends a conflict to the repository's resolver agent (a run, once per submission) or,
    /// without one, to a human (an incident); says which, for the submission's detail.
    async fn route_conflict(&self, r: &RepoRecord, sub: &SubmissionRecord, detail: &str) -> String {
        let now = self.clock.now_ms();
        if let Some(resolver) = &r.resolver {
            let started = async {
                let name = steward_types::AgentName::parse(resolver).map_err(|e| e.0)?;
                let agent = self
                    .agents
                    .get_agent(&name, None)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no agent {resolver}"))?;
                let ns = uuid::Uuid::from_bytes([0x59; 16]);
                let run = steward_store::NewRun {
                    id: steward_types::RunId::from_uuid(uuid::Uuid::new_v5(&ns, sub.id.as_bytes())),
                    agent: name,
                    agent_version: agent.version,
                    parent_id: None,
                    input: format!(
                        "Resolve a merge conflict in the git repository at {}: branch {} does not merge onto {} ({detail}). Rebase or merge {} onto {}, resolve the conflicts, and submit {} again.",
                        r.path, sub.branch, r.target, sub.branch, r.target, sub.branch
                    ),
                };
                let id = run.id.clone();
                self.launch
                    .create(run, crate::Origin::MergeResolver(r.path.clone()))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(id)
            }
            .await;
            match started {
                Ok(id) => return format!("; routed to {resolver} (run {id})"),
                Err(e) => {
                    tracing::warn!(error = %e, "routing a merge conflict to its resolver failed; a human gets it")
                }
            }
        }
        let incident = IncidentRecord {
            id: format!("inc_{}", uuid::Uuid::now_v7().simple()),
            supervisor: format!("merge:{}", r.name),
            reason: format!("{} ({}) {detail}", sub.branch, sub.id),
            state: "open".into(),
            created_at: now,
            resolved_at: None,
            resolution: None,
        };
        match self.incidents.open_incident(&incident).await {
            Ok(()) => format!("; incident {} opened", incident.id),
            Err(e) => {
                tracing::warn!(error = %e, "opening the merge conflict's incident failed");
                String::new()
            }
        }
    }

    /// Claims `paths` of `repo` for `holder` for `ttl_ms`; the leases of others in the way
    /// are a conflict.
    pub async fn lease(
        &self,
        repo: &str,
        holder: &str,
        paths: &[String],
        ttl_ms: i64,
    ) -> Result<Vec<PathLease>> {
        self.repo(repo).await?;
        check_name("holder", holder)?;
        if paths.is_empty()
            || paths.len() > 1000
            || paths.iter().any(|p| p.len() > 1024 || p.contains(".."))
        {
            return Err(Error::InvalidRequest(
                "paths: 1 to 1000 repository paths, no `..`".into(),
            ));
        }
        if !(1..=7 * 86_400_000).contains(&ttl_ms) {
            return Err(Error::InvalidRequest("ttl_ms: from 1 to a week".into()));
        }
        let now = self.clock.now_ms();
        let in_way = self
            .merges
            .lease_paths(repo, holder, paths, now + ttl_ms, now)
            .await?;
        if let Some(l) = in_way.first() {
            return Err(Error::Conflict(format!(
                "{} is leased by {} until {}",
                l.path, l.holder, l.expires_at
            )));
        }
        Ok(self.merges.path_leases(repo, now).await?)
    }

    pub async fn release(&self, repo: &str, holder: &str) -> Result<u64> {
        Ok(self.merges.release_paths(repo, holder).await?)
    }

    pub async fn leases(&self, repo: &str) -> Result<Vec<PathLease>> {
        Ok(self.merges.path_leases(repo, self.clock.now_ms()).await?)
    }

    /// Starts checking the next submission of every repository this node is not checking
    /// already (each check runs on its own task, under a lease it renews).
    pub async fn drive(self: &Arc<Self>) -> Result<()> {
        for r in self.merges.list_repos().await? {
            if self
                .busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&r.name)
            {
                continue;
            }
            let now = self.clock.now_ms();
            let Some(sub) = self
                .merges
                .claim_submission(&r.name, &self.node, now, now + self.lease_ms())
                .await?
            else {
                continue;
            };
            self.busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(r.name.clone());
            let me = self.clone();
            tokio::spawn(async move {
                me.check_leased(&r, &sub).await;
                me.busy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&r.name);
            });
        }
        Ok(())
    }

    /// Runs the check of `sub` while renewing its lease, and records how it ended. A check
    /// whose lease is lost (this node stalled, and another took the submission over) stops at
    /// once — its git and check processes are killed with it — and records nothing.
    async fn check_leased(&self, r: &RepoRecord, sub: &SubmissionRecord) {
        let checked = tokio::select! {
            c = self.check(r, sub) => c,
            () = self.keep_lease(sub) => {
                tracing::warn!(submission = %sub.id, "the merge check's lease was lost; another node has it");
                return;
            }
        };
        let (state, detail, merged) = match checked {
            Ok(v) => v,
            Err(e) if sub.attempts >= MAX_CHECK_ATTEMPTS => (
                "failed",
                format!("the check could not run ({} tries): {e}", sub.attempts),
                None,
            ),
            Err(e) => (
                "queued",
                format!("the check could not run and will be tried again: {e}"),
                None,
            ),
        };
        let detail = if state == "conflict" {
            format!("{detail}{}", self.route_conflict(r, sub, &detail).await)
        } else {
            detail
        };
        let recorded = self
            .merges
            .finish_submission(
                &sub.id,
                &self.node,
                sub.attempts,
                state,
                &detail,
                merged.as_deref(),
                self.clock.now_ms(),
            )
            .await;
        match recorded {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(submission = %sub.id, "the merge check ended after its lease was lost; the node that took it over decides")
            }
            Err(e) => {
                tracing::warn!(submission = %sub.id, error = %e, "recording the merge check failed; it is checked again once its lease runs out")
            }
        }
    }

    /// Renews the lease on `sub`'s check until it is lost (returns then). A renewal the store
    /// cannot take is tried again while the lease lasts.
    async fn keep_lease(&self, sub: &SubmissionRecord) {
        let mut held_until = self.clock.now_ms() + self.lease_ms();
        loop {
            tokio::time::sleep(self.renew_every).await;
            let now = self.clock.now_ms();
            match self
                .merges
                .renew_check(&sub.id, &self.node, sub.attempts, now + self.lease_ms())
                .await
            {
                Ok(true) => held_until = now + self.lease_ms(),
                Ok(false) => return,
                Err(e) if now < held_until => {
                    tracing::warn!(submission = %sub.id, error = %e, "renewing the merge check's lease failed; retrying")
                }
                Err(_) => return,
            }
        }
    }

    /// Rebases (or merges), checks and lands one submission: its end state, what happened,
    /// the commit the target now points at.
    async fn check(&self, r: &RepoRecord, sub: &SubmissionRecord) -> Result<Checked> {
        let path = Path::new(&r.path);
        let target_ref = format!("refs/heads/{}", r.target);
        let Some(base) = rev(path, &target_ref).await? else {
            return Ok(("failed", format!("the target {} is gone", r.target), None));
        };
        let Some(head) = rev(path, &format!("refs/heads/{}", sub.branch)).await? else {
            return Ok(("failed", format!("the branch {} is gone", sub.branch), None));
        };
        // Landed already (by a check that stopped before it could record so): nothing to land.
        // Rebasing finds this on its own (every commit's change is on the target).
        if r.strategy == "merge" && is_ancestor(path, &head, &base).await? {
            return Ok((
                "landed",
                format!("nothing to land: {} has all of it already", r.target),
                Some(base),
            ));
        }
        let commit = if r.strategy == "merge" {
            match self.merge_commit(path, &base, &head, sub).await? {
                Ok(c) => c,
                Err(paths) => {
                    return Ok((
                        "conflict",
                        format!(
                            "conflicts with {} as it is now: {}",
                            r.target,
                            paths.join(", ")
                        ),
                        None,
                    ))
                }
            }
        } else {
            match rebase(path, &base, &head).await? {
                Rebased::Tip(t) if t == base => {
                    return Ok((
                        "landed",
                        format!("nothing to land: {} has all of it already", r.target),
                        Some(base),
                    ))
                }
                Rebased::Tip(t) => t,
                Rebased::Conflict { commit, paths } => {
                    return Ok((
                        "conflict",
                        format!(
                            "commit {commit} conflicts with {} as it is now: {}",
                            r.target,
                            paths.join(", ")
                        ),
                        None,
                    ))
                }
                Rebased::Refused(why) => return Ok(("failed", why, None)),
            }
        };
        // The result, checked out on its own.
        let dir = std::env::temp_dir().join(format!("steward-merge-{}", sub.id));
        let dir_s = dir.display().to_string();
        clear_worktree(path, &dir).await?;
        let (ok, out) = git(path, &["worktree", "add", "--detach", &dir_s, &commit]).await?;
        if !ok {
            return Err(Error::Unavailable(format!(
                "git worktree add: {}",
                out.trim()
            )));
        }
        let checked = self.run_check(&dir, &r.check_cmd).await;
        let _ = git(path, &["worktree", "remove", "--force", &dir_s]).await;
        let _ = std::fs::remove_dir_all(&dir);
        let (passed, output) = checked?;
        if !passed {
            return Ok(("failed", format!("the check failed: {output}"), None));
        }
        // Lands only if the target has not moved meanwhile; if it has, check again on top.
        let (ok, out) = git(path, &["update-ref", &target_ref, &commit, &base]).await?;
        if !ok {
            return Ok((
                "queued",
                format!("{} moved during the check: {}", r.target, out.trim()),
                None,
            ));
        }
        Ok((
            "landed",
            format!("landed on {} as {commit}", r.target),
            Some(commit),
        ))
    }

    /// One merge commit of `head` onto `base`, or the paths in conflict.
    async fn merge_commit(
        &self,
        path: &Path,
        base: &str,
        head: &str,
        sub: &SubmissionRecord,
    ) -> Result<std::result::Result<String, Vec<String>>> {
        let tree = match merge_tree(path, base, head).await? {
            Merged::Tree(t) => t,
            Merged::Conflicts(paths) => return Ok(Err(paths)),
        };
        let message = format!(
            "Merge {} ({}, submitted by {})",
            sub.branch, sub.id, sub.submitter
        );
        let (ok, commit) = git(
            path,
            &["commit-tree", &tree, "-p", base, "-p", head, "-m", &message],
        )
        .await?;
        if !ok {
            return Err(Error::Unavailable(format!(
                "git commit-tree: {}",
                commit.trim()
            )));
        }
        Ok(Ok(commit.trim().to_string()))
    }

    /// Runs the check in `dir`: in a sandbox when this server has them, else a subprocess.
    async fn run_check(&self, dir: &PathBuf, command: &str) -> Result<(bool, String)> {
        // The last 2,000 characters: where a failing check says why.
        let tail = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            let chars: Vec<char> = s.chars().collect();
            let start = chars.len().saturating_sub(2000);
            chars[start..].iter().collect::<String>().trim().to_string()
        };
        if let Some(sb) = &self.sandboxes {
            match sb.exec_dir(dir, command).await {
                Ok(Some((passed, out))) => return Ok((passed, tail(&out))),
                // Sandboxes off on this host: the check runs as a plain subprocess.
                Ok(None) => {}
                Err(e) => return Err(Error::Unavailable(e)),
            }
        }
        // The check runs the repository's code: none of Steward's own environment.
        let run = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .current_dir(dir)
            .env_clear()
            .envs(steward_types::child_env::passed_on())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(600), run)
            .await
            .map_err(|_| Error::Unavailable("the check timed out after 10 minutes".into()))?
            .map_err(|e| Error::Unavailable(format!("running the check: {e}")))?;
        let mut text = out.stdout.clone();
        text.extend_from_slice(&out.stderr);
        Ok((out.status.success(), tail(&text)))
    }
}
