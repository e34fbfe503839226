//! The control plane's state: the mesh from its source plus what the management API applied, the
//! compiled resources served over ADS, and the one way either changes (validate and compile the whole
//! result first; nothing is half-applied). Applied objects are written to a file in the config
//! directory, so they survive a restart (in memory with the embedded default).

use crate::mesh::{ListenerSpec, Mesh, RouteSpec, ServiceSpec};
use crate::resources::Resources;
use crate::store::{API_FILE, MeshSource};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The mesh being served and its version.
#[derive(Debug, Clone, Default)]
pub struct Served {
    pub version: String,
    pub mesh: Mesh,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The result would be invalid: every problem, by object and field.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The object is defined in a config file: change it there.
    #[error("{0}")]
    OwnedByFile(String),
    #[error("{0}")]
    Storage(String),
}

/// The outcome of an apply or delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    pub version: String,
    pub changes: Vec<String>,
}

pub struct Control {
    source: Arc<dyn MeshSource>,
    /// Applied objects when there is no config directory to keep them in.
    in_memory: Mutex<Mesh>,
    resources: watch::Sender<Arc<Resources>>,
    served: watch::Sender<Arc<Served>>,
    /// One change at a time.
    changing: Mutex<()>,
    /// The last read of the source raced a write: read again.
    unsettled: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("source", &self.source.describe()).finish_non_exhaustive()
    }
}

/// Validates and compiles a whole mesh.
pub fn compile_checked(mesh: &Mesh) -> Result<Resources, String> {
    mesh.validate().map_err(|e| e.to_string())?;
    crate::compile::compile(mesh)
}

impl Control {
    /// Loads the source; an error if the initial config is not valid.
    pub fn new(source: Arc<dyn MeshSource>) -> Result<Arc<Control>, String> {
        let mesh = source.load()?;
        let resources = compile_checked(&mesh)?;
        let served = Served { version: resources.version.clone(), mesh };
        Ok(Arc::new(Control {
            source,
            in_memory: Mutex::new(Mesh::default()),
            resources: watch::channel(Arc::new(resources)).0,
            served: watch::channel(Arc::new(served)).0,
            changing: Mutex::new(()),
            unsettled: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// Changes when the source's files may have changed.
    pub fn fingerprint(&self) -> Vec<(std::path::PathBuf, Option<std::time::SystemTime>, u64)> {
        self.source.fingerprint()
    }

    pub fn resources(&self) -> watch::Receiver<Arc<Resources>> {
        self.resources.subscribe()
    }

    pub fn served(&self) -> watch::Receiver<Arc<Served>> {
        self.served.subscribe()
    }

    pub fn current(&self) -> Arc<Served> {
        self.served.borrow().clone()
    }

    /// The whole mesh: the source (which reads back the API file) plus in-memory applied objects.
    /// Applied objects come first: a pushed route is matched before the files' routes.
    fn full(&self) -> Result<Mesh, String> {
        let source = self.source.load()?;
        if self.source.api_file().is_some() {
            return Ok(source);
        }
        let mut mesh = self.lock_memory().clone();
        mesh.extend(source);
        Ok(mesh)
    }

    fn lock_memory(&self) -> std::sync::MutexGuard<'_, Mesh> {
        self.in_memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when a read was discarded because the source changed while it was read.
    pub fn needs_reload(&self) -> bool {
        self.unsettled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Re-reads the source and publishes it if it changed; a bad config is logged and the last good
    /// one stays. What was read is used only if `settled()` still holds after reading (the files did
    /// not change meanwhile); otherwise it is read again on the next poll.
    pub fn reload_if(&self, settled: impl Fn() -> bool) {
        let _one = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let read = self.full();
        let is_settled = settled();
        self.unsettled.store(!is_settled, std::sync::atomic::Ordering::Relaxed);
        if !is_settled {
            tracing::debug!("config files changed while being read: reading them again");
            return;
        }
        match read.and_then(|mesh| compile_checked(&mesh).map(|r| (mesh, r))) {
            Ok((_, resources)) if resources.version == self.resources.borrow().version => {}
            Ok((mesh, resources)) => {
                tracing::info!(version = resources.version, "config changed: pushing");
                self.publish(mesh, resources);
            }
            Err(e) => tracing::error!("config rejected, still serving the last good one:\n{e}"),
        }
    }

    fn publish(&self, mesh: Mesh, resources: Resources) {
        let served = Served { version: resources.version.clone(), mesh };
        self.resources.send_replace(Arc::new(resources));
        self.served.send_replace(Arc::new(served));
    }

    /// Creates or replaces `objects` (by kind and name).
    pub fn apply(&self, objects: Mesh, dry_run: bool) -> Result<Changed, ChangeError> {
        self.change(dry_run, |applied, full, changes| {
            for l in objects.listeners {
                upsert(
                    &mut applied.listeners,
                    full.listeners.iter().map(|x| (&x.name, &x.origin)),
                    l,
                    "listener",
                    changes,
                )?;
            }
            for s in objects.services {
                upsert(
                    &mut applied.services,
                    full.services.iter().map(|x| (&x.name, &x.origin)),
                    s,
                    "service",
                    changes,
                )?;
            }
            for r in objects.routes {
                upsert(&mut applied.routes, full.routes.iter().map(|x| (&x.name, &x.origin)), r, "route", changes)?;
            }
            Ok(())
        })
    }

    /// Deletes objects applied through the API, by kind (`listener`, `service`, `route`) and name.
    pub fn delete(&self, refs: &[(String, String)], dry_run: bool) -> Result<Changed, ChangeError> {
        self.change(dry_run, |applied, full, changes| {
            for (kind, name) in refs {
                let (removed, owner) = match kind.as_str() {
                    "listener" => (
                        remove(&mut applied.listeners, name),
                        owner(full.listeners.iter().map(|x| (&x.name, &x.origin)), name),
                    ),
                    "service" => (
                        remove(&mut applied.services, name),
                        owner(full.services.iter().map(|x| (&x.name, &x.origin)), name),
                    ),
                    "route" => (
                        remove(&mut applied.routes, name),
                        owner(full.routes.iter().map(|x| (&x.name, &x.origin)), name),
                    ),
                    other => {
                        return Err(ChangeError::Invalid(format!(
                            "unknown kind '{other}' (listener, service or route)"
                        )));
                    }
                };
                if removed {
                    changes.push(format!("deleted {kind} {name}"));
                } else if let Some(file) = owner {
                    return Err(ChangeError::OwnedByFile(format!(
                        "{kind} '{name}' is defined in {file}: delete it there"
                    )));
                } else {
                    return Err(ChangeError::NotFound(format!("no {kind} '{name}'")));
                }
            }
            Ok(())
        })
    }

    /// Runs one change on the applied objects: the whole result validated and compiled before
    /// anything is stored or served.
    fn change(
        &self,
        dry_run: bool,
        edit: impl FnOnce(&mut Mesh, &Mesh, &mut Vec<String>) -> Result<(), ChangeError>,
    ) -> Result<Changed, ChangeError> {
        let _one = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let full = self.full().map_err(ChangeError::Invalid)?;
        let api_file = self.source.api_file();
        let is_applied = |origin: &Option<(String, usize)>| origin.as_ref().is_some_and(|(file, _)| file == API_FILE);
        let mut applied = Mesh {
            listeners: full.listeners.iter().filter(|x| is_applied(&x.origin)).cloned().collect(),
            services: full.services.iter().filter(|x| is_applied(&x.origin)).cloned().collect(),
            routes: full.routes.iter().filter(|x| is_applied(&x.origin)).cloned().collect(),
            // Security policies come from the config files only (not the management API yet).
            ..Mesh::default()
        };
        let mut changes = Vec::new();
        edit(&mut applied, &full, &mut changes)?;
        // Applied objects are named in errors (and kept, in memory) as coming from the API's file.
        mark_applied(&mut applied);
        let mut candidate = applied.clone();
        candidate.extend(Mesh {
            listeners: full.listeners.iter().filter(|x| !is_applied(&x.origin)).cloned().collect(),
            services: full.services.iter().filter(|x| !is_applied(&x.origin)).cloned().collect(),
            routes: full.routes.iter().filter(|x| !is_applied(&x.origin)).cloned().collect(),
            peer_authentications: full.peer_authentications.clone(),
            authorization_policies: full.authorization_policies.clone(),
        });
        let resources = compile_checked(&candidate).map_err(ChangeError::Invalid)?;
        let result = Changed { version: resources.version.clone(), changes };
        if dry_run {
            return Ok(result);
        }
        match &api_file {
            Some(path) => {
                let text = format!(
                    "# Objects applied through strait-control's management API. Edited by the API; objects\n\
                     # here are replaced by name on apply.\n{}",
                    yaml_serde::to_string(&applied).map_err(|e| ChangeError::Storage(e.to_string()))?
                );
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, text)
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .map_err(|e| ChangeError::Storage(format!("{}: {e}", path.display())))?;
            }
            None => *self.lock_memory() = applied,
        }
        if resources.version != self.resources.borrow().version {
            tracing::info!(version = resources.version, changes = ?result.changes, "applied through the API: pushing");
            self.publish(candidate, resources);
        }
        Ok(result)
    }
}

fn mark_applied(mesh: &mut Mesh) {
    let origin = |i: usize| Some((API_FILE.to_string(), i));
    mesh.listeners.iter_mut().enumerate().for_each(|(i, x)| x.origin = origin(i));
    mesh.services.iter_mut().enumerate().for_each(|(i, x)| x.origin = origin(i));
    mesh.routes.iter_mut().enumerate().for_each(|(i, x)| x.origin = origin(i));
}

trait Named {
    fn name(&self) -> &str;
    fn clear_origin(&mut self);
}

macro_rules! named {
    ($t:ty) => {
        impl Named for $t {
            fn name(&self) -> &str {
                &self.name
            }
            fn clear_origin(&mut self) {
                self.origin = None;
            }
        }
    };
}
named!(ListenerSpec);
named!(ServiceSpec);
named!(RouteSpec);

/// Where an object with this name is defined, if in a config file (not the API's).
fn owner<'a>(mut all: impl Iterator<Item = (&'a String, &'a Option<(String, usize)>)>, name: &str) -> Option<String> {
    all.find(|(n, _)| *n == name)
        .and_then(|(_, origin)| origin.as_ref().map(|(file, _)| file.clone()))
        .filter(|file| file != API_FILE)
}

fn upsert<'a, T: Named + Clone + PartialEq>(
    applied: &mut Vec<T>,
    all: impl Iterator<Item = (&'a String, &'a Option<(String, usize)>)>,
    mut object: T,
    kind: &str,
    changes: &mut Vec<String>,
) -> Result<(), ChangeError> {
    object.clear_origin();
    let name = object.name().to_string();
    if let Some(file) = owner(all, &name) {
        return Err(ChangeError::OwnedByFile(format!("{kind} '{name}' is defined in {file}: change it there")));
    }
    match applied.iter_mut().find(|x| x.name() == name) {
        Some(existing) => {
            let mut before = existing.clone();
            before.clear_origin();
            // The same object again is no change.
            if before != object {
                *existing = object;
                changes.push(format!("replaced {kind} {name}"));
            }
        }
        None => {
            applied.push(object);
            changes.push(format!("created {kind} {name}"));
        }
    }
    Ok(())
}

fn remove<T: Named>(applied: &mut Vec<T>, name: &str) -> bool {
    let before = applied.len();
    applied.retain(|x| x.name() != name);
    applied.len() != before
}
