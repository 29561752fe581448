//! What one process does in a deployment (`--role`) and where its vectors live (`--store`).
//!
//! Owns the rules that tie the two together: the default is one process doing everything on the
//! embedded store; a distributed deployment runs one indexer (uploads, deletes, re-embedding,
//! cutovers) and any number of stateless query replicas, all on one Milvus, which is why `query`
//! and `indexer` need a `milvus://` store and why a query replica refuses writes.

use crate::store::milvus::MilvusUrl;
use std::path::PathBuf;

/// What this process does (`--role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// Everything: uploads, deletes, re-embedding and search.
    #[default]
    All,
    /// Stateless search: follows the generations the indexer serves; refuses writes.
    Query,
    /// Uploads, deletes, re-embedding and cutovers (and search); exactly one per deployment.
    Indexer,
}

impl Role {
    pub fn writes(self) -> bool {
        self != Role::Query
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Query => "query",
            Role::Indexer => "indexer",
        }
    }
}

/// Where the vectors live (`--store`).
#[derive(Clone, Debug, Default)]
pub enum StoreSpec {
    /// This crate's store under `--data-dir` (WAL + HNSW).
    #[default]
    Embedded,
    /// A Milvus server or cluster.
    Milvus(MilvusUrl),
}

impl StoreSpec {
    /// `embedded` or `milvus://HOST:PORT[/DATABASE][?options]`; `token` (from
    /// `MVSERVE_MILVUS_TOKEN`) authenticates to Milvus.
    pub fn parse(s: &str, token: Option<String>) -> Result<StoreSpec, String> {
        match s {
            "" | "embedded" => Ok(StoreSpec::Embedded),
            s if s.starts_with("milvus://") => Ok(StoreSpec::Milvus(MilvusUrl::parse(s, token)?)),
            s => Err(format!(
                "--store must be `embedded` or `milvus://HOST:PORT[/DATABASE]`, not {s:?}"
            )),
        }
    }
}

/// Checks that role, store and blob directory fit together; returns the directory that holds
/// generation files (blobs, adapter copies): `--blob-dir` when given, else `--data-dir`.
pub fn files_root(
    role: Role,
    store: &StoreSpec,
    data_dir: &std::path::Path,
    blob_dir: Option<&std::path::Path>,
) -> Result<PathBuf, String> {
    match (role, store, blob_dir) {
        (Role::Query | Role::Indexer, StoreSpec::Embedded, _) => Err(format!(
            "--role {} needs a shared store: give --store milvus://HOST:PORT",
            role.name()
        )),
        (_, StoreSpec::Embedded, Some(_)) => Err(
            "--blob-dir is for a shared store (--store milvus://...); the embedded store keeps blobs in --data-dir".into(),
        ),
        (_, _, Some(b)) => Ok(b.to_path_buf()),
        (_, _, None) => Ok(data_dir.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn roles_need_a_shared_store() {
        let m = StoreSpec::parse("milvus://h:1", None).unwrap();
        let e = StoreSpec::Embedded;
        let d = Path::new("d");
        let b = Some(Path::new("b"));
        assert!(files_root(Role::Query, &e, d, None).is_err());
        assert!(files_root(Role::Indexer, &e, d, None).is_err());
        assert!(files_root(Role::All, &e, d, b).is_err());
        assert_eq!(files_root(Role::All, &e, d, None).unwrap(), Path::new("d"));
        assert_eq!(files_root(Role::Query, &m, d, b).unwrap(), Path::new("b"));
        assert_eq!(
            files_root(Role::Indexer, &m, d, None).unwrap(),
            Path::new("d")
        );
        assert!(StoreSpec::parse("postgres://x", None).is_err());
        assert!(matches!(
            StoreSpec::parse("embedded", None),
            Ok(StoreSpec::Embedded)
        ));
    }
}
