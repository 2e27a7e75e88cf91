//! The OpenAPI document checked against what the server really answers: every response the
//! tests' helpers receive from a documented path must be documented there — its status, its
//! content type, and (for JSON) a body that validates against the schema given for it.
//! Generated clients and fuzzers trust the document; this keeps it true.

use serde_json::Value;

pub struct Spec {
    doc: Value,
    /// Path templates, split into segments (`None` for a `{parameter}`).
    templates: Vec<(String, Vec<Option<String>>)>,
}

/// Paths the document covers (the OpenAI-compatible `/v1` is OpenAI's API, not this one's).
fn documented_here(path: &str) -> bool {
    path.starts_with("/api/") || matches!(path, "/healthz" | "/readyz" | "/metrics")
}

impl Spec {
    pub fn new(doc: Value) -> Spec {
        let templates = doc["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .keys()
                    .map(|t| {
                        let segs = t
                            .split('/')
                            .map(|s| {
                                (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_string())
                            })
                            .collect();
                        (t.clone(), segs)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Spec { doc, templates }
    }

    /// The template `path` is an instance of: the one with the most fixed segments.
    fn template(&self, path: &str) -> Option<&str> {
        let segs: Vec<&str> = path.split('/').collect();
        self.templates
            .iter()
            .filter(|(_, t)| {
                t.len() == segs.len()
                    && t.iter().zip(&segs).all(|(t, s)| match t {
                        Some(fixed) => fixed == s,
                        None => !s.is_empty(),
                    })
            })
            .max_by_key(|(_, t)| t.iter().filter(|s| s.is_some()).count())
            .map(|(name, _)| name.as_str())
    }

    /// Whether the document tells the truth about this exchange; what is wrong when not.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        if !documented_here(path) {
            return Ok(());
        }
        let what = format!("{method} {path} -> {status}");
        // The router's own answers for paths and methods that do not exist.
        let Some(template) = self.template(path) else {
            return if status == 404 {
                Ok(())
            } else {
                Err(format!("{what}: the path is not in the document"))
            };
        };
        let Some(op) = self.doc["paths"][template].get(method.to_ascii_lowercase()) else {
            return if status == 405 {
                Ok(())
            } else {
                Err(format!("{what}: {method} is not documented for {template}"))
            };
        };
        let responses = &op["responses"];
        let Some(response) = responses
            .get(status.to_string())
            .or_else(|| responses.get("default"))
        else {
            let documented: Vec<&String> = responses
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            return Err(format!(
                "{what}: status {status} is not documented for {method} {template} (documented: {documented:?})"
            ));
        };
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return if body.is_empty() || method == "HEAD" {
                Ok(())
            } else {
                Err(format!(
                    "{what}: a body of type {content_type:?} is sent, and no content is documented"
                ))
            };
        };
        let ct = content_type
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let Some(media) = content.get(&ct) else {
            if body.is_empty() && ct.is_empty() {
                return Ok(());
            }
            return Err(format!(
                "{what}: content type {ct:?} is not documented (documented: {:?})",
                content.keys().collect::<Vec<_>>()
            ));
        };
        if ct != "application/json" {
            return Ok(());
        }
        let Some(schema) = media.get("schema") else {
            return Ok(());
        };
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| format!("{what}: documented as JSON, and not JSON: {e}"))?;
        let mut rooted = schema.clone();
        if let Some(o) = rooted.as_object_mut() {
            o.insert("components".into(), self.doc["components"].clone());
        }
        let validator = jsonschema::validator_for(&rooted)
            .map_err(|e| format!("{what}: the documented schema does not compile: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .take(5)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}: the body does not match its documented schema: {}; body: {}",
                errors.join("; "),
                String::from_utf8_lossy(&body[..body.len().min(500)])
            ))
        }
    }
}
