//! Ranked full-text search over tools (`tools_search`): BM25 over each tool's name, description
//! and the names and descriptions in its argument schema, so an agent with hundreds of tools
//! loads only the schemas it needs. A registry is hundreds of tools, not millions: the index is
//! built in memory for the tools the caller may see, per search.

use std::collections::HashMap;

use serde_json::Value;

/// BM25's usual constants: term-frequency saturation and length normalisation.
const K1: f64 = 1.2;
const B: f64 = 0.75;
/// A word of the name counts as this many words of the description.
const NAME_WEIGHT: u32 = 3;

/// One tool as the index sees it.
pub struct Entry<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub schema: &'a Value,
}

/// The tools searched, indexed.
pub struct Catalog {
    docs: Vec<(String, HashMap<String, u32>, u32)>,
    /// In how many tools each term appears.
    df: HashMap<String, u32>,
    avg_len: f64,
}

impl Catalog {
    pub fn new<'a>(entries: impl IntoIterator<Item = Entry<'a>>) -> Catalog {
        let mut docs = Vec::new();
        let mut df: HashMap<String, u32> = HashMap::new();
        for e in entries {
            let mut tf: HashMap<String, u32> = HashMap::new();
            for t in terms(e.name) {
                *tf.entry(t).or_default() += NAME_WEIGHT;
            }
            let mut text = e.description.to_string();
            schema_text(e.schema, &mut text, 0);
            for t in terms(&text) {
                *tf.entry(t).or_default() += 1;
            }
            for t in tf.keys() {
                *df.entry(t.clone()).or_default() += 1;
            }
            let len = tf.values().sum();
            docs.push((e.name.to_string(), tf, len));
        }
        let avg_len = if docs.is_empty() {
            1.0
        } else {
            docs.iter().map(|d| d.2 as f64).sum::<f64>() / docs.len() as f64
        };
        Catalog { docs, df, avg_len }
    }

    /// The best `limit` tools for `query`, best first, with their scores; tools that share no
    /// term with the query are left out. Ties go by name, so the order is stable.
    pub fn search(&self, query: &str, limit: usize) -> Vec<(String, f64)> {
        let n = self.docs.len() as f64;
        let mut query: Vec<String> = terms(query).collect();
        query.sort();
        query.dedup();
        let mut scored: Vec<(String, f64)> = self
            .docs
            .iter()
            .filter_map(|(name, tf, len)| {
                let score: f64 = query
                    .iter()
                    .filter_map(|q| {
                        let f = *tf.get(q)? as f64;
                        let df = *self.df.get(q).unwrap_or(&0) as f64;
                        let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                        let norm = K1 * (1.0 - B + B * *len as f64 / self.avg_len);
                        Some(idf * f * (K1 + 1.0) / (f + norm))
                    })
                    .sum();
                (score > 0.0).then(|| (name.clone(), score))
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        scored.truncate(limit);
        scored
    }
}

/// Lower-cased words, split at anything not a letter or digit and at camelCase humps, with a
/// plural `s` dropped so `files` finds `file`.
fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if c.is_uppercase() && prev_lower && !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            prev_lower = c.is_lowercase() || c.is_ascii_digit();
            word.extend(c.to_lowercase());
        } else {
            prev_lower = false;
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words.into_iter().map(|w| {
        if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") {
            w[..w.len() - 1].to_string()
        } else {
            w
        }
    })
}

/// The words of a JSON Schema a caller would search by: property names, titles, descriptions
/// and enum values, to a bounded depth.
fn schema_text(schema: &Value, out: &mut String, depth: usize) {
    if depth > 8 {
        return;
    }
    match schema {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("description" | "title", Value::String(s)) => {
                        out.push(' ');
                        out.push_str(s);
                    }
                    ("properties", Value::Object(props)) => {
                        for (name, sub) in props {
                            out.push(' ');
                            out.push_str(name);
                            schema_text(sub, out, depth + 1);
                        }
                    }
                    ("enum", Value::Array(values)) => {
                        for s in values.iter().filter_map(Value::as_str) {
                            out.push(' ');
                            out.push_str(s);
                        }
                    }
                    (_, Value::Object(_) | Value::Array(_)) => schema_text(v, out, depth + 1),
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                schema_text(v, out, depth + 1);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog(tools: &[(&str, &str, Value)]) -> Catalog {
        Catalog::new(tools.iter().map(|(name, description, schema)| Entry {
            name,
            description,
            schema,
        }))
    }

    #[test]
    fn the_tool_whose_name_and_description_match_ranks_first() {
        let c = catalog(&[
            (
                "github.create_issue",
                "Opens an issue on a repository.",
                json!({"type": "object", "properties": {"title": {"type": "string"}}}),
            ),
            (
                "github.list_pulls",
                "Lists the pull requests of a repository.",
                json!({}),
            ),
            (
                "weather.forecast",
                "The forecast for a city.",
                json!({"properties": {"city": {"description": "a city name"}}}),
            ),
        ]);
        let hits = c.search("create an issue", 10);
        assert_eq!(hits[0].0, "github.create_issue", "{hits:?}");
        assert!(
            hits.iter().all(|(n, _)| n != "weather.forecast"),
            "{hits:?}"
        );
        // Words of the schema count: `city` is only in the forecast's arguments.
        assert_eq!(c.search("city", 10)[0].0, "weather.forecast");
        // Plurals and camelCase find their words.
        assert_eq!(c.search("pull request", 10)[0].0, "github.list_pulls");
        assert_eq!(
            catalog(&[("readFile", "", json!({}))]).search("file", 1)[0].0,
            "readFile"
        );
    }

    #[test]
    fn nothing_shared_finds_nothing_and_limit_bounds_the_answer() {
        let c = catalog(&[
            ("a_tool", "does one thing", json!({})),
            ("b_tool", "does another thing", json!({})),
        ]);
        assert!(c.search("zebra", 10).is_empty());
        assert!(c.search("", 10).is_empty());
        assert_eq!(c.search("tool thing", 1).len(), 1);
        // A deeply nested schema is read to a bounded depth.
        let mut deep = json!({"description": "bottom"});
        for _ in 0..50 {
            deep = json!({"items": deep});
        }
        assert!(catalog(&[("deep", "", deep)])
            .search("bottom", 1)
            .is_empty());
    }
}
