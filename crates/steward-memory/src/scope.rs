//! Whose a memory is. Every memory belongs to exactly one scope, and policy decides who reads
//! and writes each (`memory.read` / `memory.write` on `Steward::Namespace::"<scope>"`).

use std::fmt;

use crate::MemoryError;

/// The longest name a scope may carry after its kind.
const MAX_NAME: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The whole organisation's.
    Org,
    User(String),
    Agent(String),
    Run(String),
    /// A named collection, shared as policy says.
    Collection(String),
}

impl Scope {
    /// `org`, `user:<id>`, `agent:<name>`, `run:<id>` or `collection:<name>`; names are 1–200
    /// letters, digits and `-_.@:`.
    pub fn parse(s: &str) -> Result<Scope, MemoryError> {
        if s == "org" {
            return Ok(Scope::Org);
        }
        let bad = |why: &str| {
            MemoryError::BadRequest(format!(
                "scope {:?}: {why}; a scope is org, user:<id>, agent:<name>, run:<id> or collection:<name>",
                s.chars().take(80).collect::<String>()
            ))
        };
        let (kind, name) = s.split_once(':').ok_or_else(|| bad("no kind"))?;
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(bad("its name must be 1 to 200 characters"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c))
        {
            return Err(bad("its name may hold only letters, digits and -_.@:"));
        }
        let name = name.to_string();
        Ok(match kind {
            "user" => Scope::User(name),
            "agent" => Scope::Agent(name),
            "run" => Scope::Run(name),
            "collection" => Scope::Collection(name),
            _ => return Err(bad("unknown kind")),
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Org => f.write_str("org"),
            Scope::User(n) => write!(f, "user:{n}"),
            Scope::Agent(n) => write!(f, "agent:{n}"),
            Scope::Run(n) => write!(f, "run:{n}"),
            Scope::Collection(n) => write!(f, "collection:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_through_their_text() {
        for s in [
            "org",
            "user:alice@example.com",
            "agent:researcher",
            "run:run_0192",
            "collection:faq.v2",
        ] {
            assert_eq!(Scope::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn malformed_scopes_are_refused_with_the_shape_expected() {
        for s in [
            "",
            "orgs",
            "user:",
            "team:x",
            "user:a b",
            "agent:../x/y",
            "user:\u{0}",
        ] {
            let e = Scope::parse(s).unwrap_err().to_string();
            assert!(e.contains("a scope is org, user:<id>"), "{s:?}: {e}");
        }
        assert!(Scope::parse(&format!("user:{}", "a".repeat(201))).is_err());
        assert!(Scope::parse(&format!("user:{}", "a".repeat(200))).is_ok());
    }
}
