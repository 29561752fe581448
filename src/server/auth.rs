//! API keys: who may read or write which tasks. Owns the key file format and the per-request
//! check; the middleware in `server` calls [`AuthConfig::check`].
//!
//! Key file (JSON):
//! `{"admin_keys": ["..."], "keys": [{"key": "...", "tasks": ["clip", "news"], "scope": "read"}]}`.
//! `tasks: ["*"]` means every task; `scope` is `read` or `write` (write includes read). Admin keys
//! may do everything. Keys go in `Authorization: Bearer KEY` or `x-api-key: KEY`.

use serde::Deserialize;
use std::collections::HashMap;
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

/// Loaded keys, by key string.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    admin: Vec<String>,
    keys: HashMap<String, KeyEntry>,
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
        let mut keys = HashMap::new();
        for k in file.keys {
            if k.key.len() < 8 {
                anyhow::bail!("API keys must be at least 8 characters");
            }
            keys.insert(k.key.clone(), k);
        }
        if file.admin_keys.iter().any(|k| k.len() < 8) {
            anyhow::bail!("API keys must be at least 8 characters");
        }
        if keys.is_empty() && file.admin_keys.is_empty() {
            anyhow::bail!("the key file holds no keys");
        }
        Ok(AuthConfig {
            admin: file.admin_keys,
            keys,
        })
    }

    pub fn check(&self, key: Option<&str>, need: Need<'_>) -> Result<(), Denied> {
        let key = key.ok_or(Denied::Unauthenticated)?;
        if self.admin.iter().any(|a| a == key) {
            return Ok(());
        }
        let entry = self.keys.get(key).ok_or(Denied::Unauthenticated)?;
        match need {
            Need::AnyKey => Ok(()),
            Need::Admin => Err(Denied::Forbidden("this needs an admin key".into())),
            Need::Task(task, scope) => {
                if !entry.tasks.iter().any(|t| t == "*" || t == task) {
                    return Err(Denied::Forbidden(format!(
                        "this key has no access to task {task:?}"
                    )));
                }
                if scope == Scope::Write && entry.scope == Scope::Read {
                    return Err(Denied::Forbidden("this key is read-only".into()));
                }
                Ok(())
            }
        }
    }
}
