//! API keys: who may read or write which tasks. Owns the key file format, the per-request check
//! and what a caller may see; the middleware in `server` calls [`AuthConfig::check`].
//!
//! Key file (JSON):
//! `{"admin_keys": ["..."], "keys": [{"key": "...", "tasks": ["clip", "news"], "scope": "read"}]}`.
//! `tasks: ["*"]` means every task; `scope` is `read` or `write` (write includes read). Admin keys
//! may do everything. Keys go in `Authorization: Bearer KEY` or `x-api-key: KEY`.
//!
//! Keys are held only as blake3 hashes, and a presented key is compared with every one of them in
//! constant time (`blake3::Hash`'s equality) without stopping at a match, so neither the time of a
//! comparison nor a map lookup tells an attacker how much of a guessed key was right.

use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KeyEntry {
    pub key: String,
    #[serde(default)]
    pub tasks: Vec<String>,
    pub scope: Scope,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    #[serde(default)]
    pub admin_keys: Vec<String>,
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
}

/// Loaded keys, as hashes.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    admin: Vec<blake3::Hash>,
    keys: Vec<(blake3::Hash, Grant)>,
}

/// What a non-admin key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    tasks: Vec<String>,
    scope: Scope,
}

impl Grant {
    fn covers(&self, task: &str) -> bool {
        self.tasks.iter().any(|t| t == "*" || t == task)
    }
}

/// Who made a request, once its key is checked: decides which tasks it may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: the server listens on localhost only and trusts its callers.
    Local,
    Admin,
    Key(Grant),
}

impl Caller {
    /// Whether this caller may read `task` (and so see it in listings).
    pub fn may_read(&self, task: &str) -> bool {
        match self {
            Caller::Local | Caller::Admin => true,
            Caller::Key(g) => g.covers(task),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No key, or a key we do not know: 401.
    Unauthenticated,
    /// A known key without the right: 403.
    Forbidden(String),
}

/// What a request needs.
pub enum Need<'a> {
    /// Any valid key (listing tasks).
    AnyKey,
    Task(&'a str, Scope),
    Admin,
}

impl AuthConfig {
    pub fn load(path: &Path) -> anyhow::Result<AuthConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading key file {}: {e}", path.display()))?;
        let file: KeyFile = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("key file {}: {e}", path.display()))?;
        Self::from_file(file)
    }

    pub fn from_file(file: KeyFile) -> anyhow::Result<AuthConfig> {
        let all = file
            .admin_keys
            .iter()
            .chain(file.keys.iter().map(|k| &k.key));
        let mut seen = HashSet::new();
        for k in all {
            if k.len() < 8 {
                anyhow::bail!("API keys must be at least 8 characters");
            }
            // One key with two meanings would depend on which entry wins: refuse the file.
            if !seen.insert(k.as_str()) {
                anyhow::bail!("the key file lists a key more than once");
            }
        }
        if seen.is_empty() {
            anyhow::bail!("the key file holds no keys");
        }
        Ok(AuthConfig {
            admin: file
                .admin_keys
                .iter()
                .map(|k| blake3::hash(k.as_bytes()))
                .collect(),
            keys: file
                .keys
                .into_iter()
                .map(|k| {
                    let grant = Grant {
                        tasks: k.tasks,
                        scope: k.scope,
                    };
                    (blake3::hash(k.key.as_bytes()), grant)
                })
                .collect(),
        })
    }

    /// The caller a key belongs to. Every stored hash is compared (in constant time) whatever
    /// matches, so the time taken does not depend on which key, if any, was presented.
    pub fn identify(&self, key: Option<&str>) -> Result<Caller, Denied> {
        let key = key.ok_or(Denied::Unauthenticated)?;
        let h = blake3::hash(key.as_bytes());
        let admin = self.admin.iter().fold(false, |found, a| found | (*a == h));
        let grant = self
            .keys
            .iter()
            .fold(None, |found, (k, g)| if *k == h { Some(g) } else { found });
        match (admin, grant) {
            (true, _) => Ok(Caller::Admin),
            (false, Some(g)) => Ok(Caller::Key(g.clone())),
            (false, None) => Err(Denied::Unauthenticated),
        }
    }

    /// Identifies the key and checks it has what the request needs.
    pub fn check(&self, key: Option<&str>, need: Need<'_>) -> Result<Caller, Denied> {
        let caller = self.identify(key)?;
        let Caller::Key(grant) = &caller else {
            return Ok(caller);
        };
        match need {
            Need::AnyKey => {}
            Need::Admin => return Err(Denied::Forbidden("this needs an admin key".into())),
            Need::Task(task, scope) => {
                if !grant.covers(task) {
                    return Err(Denied::Forbidden(format!(
                        "this key has no access to task {task:?}"
                    )));
                }
                if scope == Scope::Write && grant.scope == Scope::Read {
                    return Err(Denied::Forbidden("this key is read-only".into()));
                }
            }
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        let file: KeyFile = serde_json::from_str(
            r#"{"admin_keys": ["admin-key-123", "admin-key-456"],
                "keys": [{"key": "reader-clip-1", "tasks": ["clip", "news"], "scope": "read"},
                         {"key": "writer-all-12", "tasks": ["*"], "scope": "write"}]}"#,
        )
        .unwrap();
        AuthConfig::from_file(file).unwrap()
    }

    #[test]
    fn keys_are_identified_and_scoped_as_before() {
        let a = config();
        let read = |t| Need::Task(t, Scope::Read);
        let write = |t| Need::Task(t, Scope::Write);
        // Missing and unknown keys, including prefixes and extensions of real ones.
        for key in [
            None,
            Some(""),
            Some("admin-key-12"),
            Some("admin-key-1234"),
            Some("reader-clip-2"),
        ] {
            assert_eq!(
                a.check(key, Need::AnyKey),
                Err(Denied::Unauthenticated),
                "{key:?}"
            );
        }
        // Both admin keys may do everything.
        for key in ["admin-key-123", "admin-key-456"] {
            assert_eq!(a.check(Some(key), Need::Admin), Ok(Caller::Admin));
            assert_eq!(a.check(Some(key), write("anything")), Ok(Caller::Admin));
        }
        let reader = a.check(Some("reader-clip-1"), Need::AnyKey).unwrap();
        assert!(reader.may_read("clip") && reader.may_read("news") && !reader.may_read("other"));
        assert!(a.check(Some("reader-clip-1"), read("news")).is_ok());
        assert!(matches!(
            a.check(Some("reader-clip-1"), read("other")),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            a.check(Some("reader-clip-1"), write("clip")),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            a.check(Some("reader-clip-1"), Need::Admin),
            Err(Denied::Forbidden(_))
        ));
        assert!(a.check(Some("writer-all-12"), write("anything")).is_ok());
        assert!(a
            .check(Some("writer-all-12"), Need::AnyKey)
            .unwrap()
            .may_read("x"));
        assert!(matches!(
            a.check(Some("writer-all-12"), Need::Admin),
            Err(Denied::Forbidden(_))
        ));
        assert!(Caller::Local.may_read("anything"));
    }

    #[test]
    fn key_files_are_checked() {
        let parse = |s: &str| AuthConfig::from_file(serde_json::from_str(s).unwrap());
        assert!(parse(r#"{"admin_keys": ["short"]}"#).is_err());
        assert!(parse(r#"{"keys": [{"key": "short", "scope": "read"}]}"#).is_err());
        assert!(parse(r#"{}"#).is_err());
        assert!(parse(
            r#"{"admin_keys": ["same-key-1"], "keys": [{"key": "same-key-1", "scope": "read"}]}"#
        )
        .is_err());
        assert!(parse(r#"{"admin_keys": ["a-long-admin-key"]}"#).is_ok());
    }

    #[test]
    fn no_secret_is_kept_in_memory() {
        let dump = format!("{:?}", config());
        for key in ["admin-key-123", "reader-clip-1", "writer-all-12"] {
            assert!(!dump.contains(key), "{dump}");
        }
    }
}
