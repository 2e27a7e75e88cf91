//! The environment of the programs Steward starts outside a sandbox that run code it did not
//! write (upstream MCP servers over stdio, the merge queue's checks on a host without
//! sandboxes). Steward's own environment holds what it must
//! keep to itself — the vault's key, the database URL with its password, the admin token,
//! model providers' API keys — so a child gets none of it: only the variables a program needs
//! to run and reach the network as this host is set up, plus what it is configured with.

use std::ffi::OsString;

/// Variables passed on: where programs are and the user's home (`npx` keeps its cache there),
/// locale and time zone, temporary files, the terminal, the host's proxies and CA bundle.
const PASSED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TERM",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Of this process's environment, what a child may see (`LC_*` too).
pub fn passed_on() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            k.to_str()
                .is_some_and(|k| PASSED.contains(&k) || k.starts_with("LC_"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_program_needs_is_passed_on() {
        let names: Vec<String> = passed_on()
            .into_iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|k| k == "PATH"),
            "programs are found: {names:?}"
        );
        assert!(
            names
                .iter()
                .all(|k| PASSED.contains(&k.as_str()) || k.starts_with("LC_")),
            "{names:?}"
        );
        assert!(!names
            .iter()
            .any(|k| k.starts_with("STEWARD_") || k.starts_with("CARGO")));
    }
}
