//! Query replicas (`--role query`): answering from whichever generation the backend serves.
//!
//! Owns the replica side of a cutover. A query replica never writes and keeps no state of its
//! own: for each task it asks the backend which generation is served (Milvus: the task's alias),
//! opens that generation, loads the adapter copy the indexer kept beside it, and refuses to answer
//! when that adapter's digest is not the one the generation's vectors were made with. A search
//! resolves the served generation first ([`Follower::sync`]), so a replica switches exactly when
//! the indexer's cutover does; a query is always encoded by the model of the generation it is
//! searched in, so no answer mixes two generations. A background pass finds tasks added or
//! removed meanwhile for the other endpoints. Does not own cutovers or retiring generations:
//! those are the indexer's.

use super::watch::AdapterLoader;
use super::{Generation, ModelInfo, Registry, RegistryError, ADAPTER_COPY, CLIP_TASK};
use crate::encode::TaskModel;
use std::sync::Arc;
use std::time::Duration;

pub struct Follower {
    registry: Arc<Registry>,
    loader: Arc<dyn AdapterLoader>,
    builtin: (Arc<dyn TaskModel>, ModelInfo),
}

impl Follower {
    pub fn new(
        registry: Arc<Registry>,
        loader: Arc<dyn AdapterLoader>,
        builtin: (Arc<dyn TaskModel>, ModelInfo),
    ) -> Follower {
        Follower {
            registry,
            loader,
            builtin,
        }
    }

    /// Brings `task` to the generation the backend serves now and returns it; `None` when the
    /// backend serves no such task.
    pub fn sync(&self, task: &str) -> Result<Option<Arc<Generation>>, RegistryError> {
        let Some(n) = self.registry.recorded_generation(task)? else {
            self.registry.remove(task);
            return Ok(None);
        };
        if let Some(t) = self.registry.get(task) {
            let g = t.current();
            if g.number == n {
                return Ok(Some(g));
            }
        }
        let store = self.registry.open_existing(task, n)?;
        let held = store
            .digest()
            .map_err(|source| RegistryError::Store {
                task: task.to_string(),
                source,
            })?
            .unwrap_or_default();
        let (model, info) = if task == CLIP_TASK {
            self.builtin.clone()
        } else {
            let copy = self.registry.generation_dir(task, n).join(ADAPTER_COPY);
            self.loader
                .load(task, &copy)
                .map_err(|why| RegistryError::Adapter {
                    task: task.to_string(),
                    why,
                })?
        };
        if model.digest() != held {
            return Err(RegistryError::Adapter {
                task: task.to_string(),
                why: format!(
                    "generation {n} holds vectors of {held}, the adapter at hand is {}",
                    model.digest()
                ),
            });
        }
        let gen = Arc::new(Generation {
            number: n,
            model,
            store,
            info,
        });
        self.registry.adopt(task, gen.clone());
        tracing::info!(task, generation = n, "following a new generation");
        Ok(Some(gen))
    }

    /// Syncs every task the backend serves and drops the ones it no longer does.
    pub fn sync_all(&self) -> Result<(), RegistryError> {
        let served = self
            .registry
            .backend()
            .tasks()
            .map_err(|source| RegistryError::Store {
                task: "*".into(),
                source,
            })?;
        for name in self.registry.names() {
            if !served.contains(&name) {
                self.registry.remove(&name);
            }
        }
        for task in served {
            if let Err(e) = self.sync(&task) {
                tracing::warn!(task, error = %e, "could not follow a task");
            }
        }
        Ok(())
    }

    /// Runs [`Follower::sync_all`] every `every` on a background thread for the life of the
    /// process.
    pub fn spawn(self: Arc<Self>, every: Duration) {
        let _ = std::thread::Builder::new()
            .name("follow".into())
            .spawn(move || loop {
                if let Err(e) = self.sync_all() {
                    tracing::warn!(error = %e, "could not list served tasks");
                }
                std::thread::sleep(every);
            });
    }
}
