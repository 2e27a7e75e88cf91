//! `{{secret:NAME}}` in a value (a header, an environment variable): the one parser of these
//! placeholders, so every place that fills them reads them alike.

/// A piece of a value: text as it stands, or the name of a vault secret to put in its place.
#[derive(Debug, PartialEq, Eq)]
pub enum Part<'a> {
    Text(&'a str),
    Secret(&'a str),
}

/// `value` cut at its placeholders; an unclosed one or a name a secret cannot have is an error.
pub fn parts(value: &str) -> Result<Vec<Part<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("{{secret:") {
        if start > 0 {
            out.push(Part::Text(&rest[..start]));
        }
        let after = &rest[start + "{{secret:".len()..];
        let end = after
            .find("}}")
            .ok_or("`{{secret:` without its closing `}}`")?;
        let name = &after[..end];
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(format!(
                "{{{{secret:{name}}}}}: a secret's name is 1-64 of a-z A-Z 0-9 - _ ."
            ));
        }
        out.push(Part::Secret(name));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Part::Text(rest));
    }
    Ok(out)
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
    }
}
