//! `{{secret:NAME}}` in a value (a header, an environment variable): the one parser of these
//! placeholders, so every place that fills them reads them alike. `{{user_secret:NAME}}` names
//! the caller's own credential: the vault secret `NAME.<owner>`, for the owner of the agent
//! that calls (where a value is filled per call).

/// A piece of a value: text as it stands, or the name of a vault secret to put in its place.
#[derive(Debug, PartialEq, Eq)]
pub enum Part<'a> {
    Text(&'a str),
    Secret(&'a str),
    /// The caller's own: the secret `NAME.<owner>`.
    UserSecret(&'a str),
}

/// `value` cut at its placeholders; an unclosed one or a name a secret cannot have is an error.
pub fn parts(value: &str) -> Result<Vec<Part<'_>>, String> {
    const SECRET: &str = "{{secret:";
    const USER_SECRET: &str = "{{user_secret:";
    let mut out = Vec::new();
    let mut rest = value;
    loop {
        let next = [SECRET, USER_SECRET]
            .iter()
            .filter_map(|open| rest.find(open).map(|at| (at, *open)))
            .min();
        let Some((start, open)) = next else {
            break;
        };
        if start > 0 {
            out.push(Part::Text(&rest[..start]));
        }
        let after = &rest[start + open.len()..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("`{open}` without its closing `}}}}`"))?;
        let name = &after[..end];
        if !is_name(name) {
            return Err(format!(
                "{open}{name}}}}}: a secret's name is 1-64 of a-z A-Z 0-9 - _ ."
            ));
        }
        out.push(if open == SECRET {
            Part::Secret(name)
        } else {
            Part::UserSecret(name)
        });
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Part::Text(rest));
    }
    Ok(out)
}

/// What a vault secret can be called.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The vault secret `{{user_secret:NAME}}` means for the agent owner `owner` (`user:alice`,
/// or `alice`): `NAME.alice`, if that is a name a secret can have.
pub fn user_secret_name(name: &str, owner: &str) -> Option<String> {
    let who = owner.rsplit(':').next().unwrap_or(owner);
    let full = format!("{name}.{who}");
    is_name(&full).then_some(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_cut_out_and_checked() {
        assert_eq!(
            parts("Bearer {{secret:T}}!").unwrap(),
            [Part::Text("Bearer "), Part::Secret("T"), Part::Text("!")]
        );
        assert_eq!(parts("plain").unwrap(), [Part::Text("plain")]);
        assert!(parts("{{secret:T").unwrap_err().contains("closing"));
        assert!(parts("{{secret:}}").unwrap_err().contains("secret's name"));
        assert!(parts("{{secret:a b}}")
            .unwrap_err()
            .contains("secret's name"));
        assert_eq!(
            parts("Bearer {{user_secret:GH}} {{secret:K}}").unwrap(),
            [
                Part::Text("Bearer "),
                Part::UserSecret("GH"),
                Part::Text(" "),
                Part::Secret("K")
            ]
        );
        assert!(parts("{{user_secret:GH").unwrap_err().contains("closing"));
        assert_eq!(
            user_secret_name("GH", "user:alice").as_deref(),
            Some("GH.alice")
        );
        assert_eq!(
            user_secret_name("GH", "team-b").as_deref(),
            Some("GH.team-b")
        );
        assert_eq!(
            user_secret_name("GH", "user:al ice"),
            None,
            "not a secret's name"
        );
    }
}
