//! Newtype ids. Constructors validate, so a value of these types is always well formed.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidId(pub String);

/// A run id: `run_` followed by a UUID (v7 for new runs, so ids sort by creation time).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    pub fn from_uuid(id: uuid::Uuid) -> Self {
        RunId(format!("run_{}", id.simple()))
    }

    /// The deterministic id of the child a run spawns at journal position `seq`:
    /// replaying the spawn finds the same child instead of starting a second one.
    pub fn child_of(parent: &RunId, seq: i64) -> Self {
        let ns = uuid::Uuid::from_bytes([0x5e; 16]);
        RunId::from_uuid(uuid::Uuid::new_v5(
            &ns,
            format!("{parent}:{seq}").as_bytes(),
        ))
    }

    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let hex = s.strip_prefix("run_").ok_or_else(|| {
            InvalidId(format!(
                "invalid run id {s:?}: run ids look like run_<32 hex digits>"
            ))
        })?;
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidId(format!(
                "invalid run id {s:?}: run ids look like run_<32 hex digits>"
            )));
        }
        Ok(RunId(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RunId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        RunId::parse(&s)
    }
}
impl From<RunId> for String {
    fn from(id: RunId) -> String {
        id.0
    }
}
impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent's name, as in `metadata.name`: DNS-label style, 1–63 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

impl AgentName {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(AgentName(s.to_string()))
        } else {
            Err(InvalidId(format!(
                "invalid agent name {s:?}: use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
            )))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for AgentName {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        AgentName::parse(&s)
    }
}
impl From<AgentName> for String {
    fn from(n: AgentName) -> String {
        n.0
    }
}
impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of one `steward serve` process, the owner named in run leases.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);
impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_round_trip_and_reject_garbage() {
        let id = RunId::from_uuid(uuid::Uuid::now_v7());
        assert_eq!(RunId::parse(id.as_str()).unwrap(), id);
        assert!(RunId::parse("run_xyz").is_err());
        assert!(RunId::parse("../../etc/passwd").is_err());
        assert!(RunId::parse(&format!("{}0", id.as_str())).is_err());
    }

    #[test]
    fn child_ids_are_deterministic_and_distinct() {
        let p = RunId::from_uuid(uuid::Uuid::now_v7());
        assert_eq!(RunId::child_of(&p, 3), RunId::child_of(&p, 3));
        assert_ne!(RunId::child_of(&p, 3), RunId::child_of(&p, 4));
    }

    #[test]
    fn agent_names_are_restricted() {
        assert!(AgentName::parse("triage-bot").is_ok());
        assert!(AgentName::parse("").is_err());
        assert!(AgentName::parse("Has Space").is_err());
        assert!(AgentName::parse(&"a".repeat(64)).is_err());
        assert!(AgentName::parse("-lead").is_err());
    }
}
