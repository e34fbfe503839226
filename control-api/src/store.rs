//! Where the mesh config comes from. The embedded default and a watched directory of YAML files
//! today; behind [`MeshSource`] so another store (etcd, the management API's own) can come later.

use crate::mesh::{self, Mesh};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A source of the whole mesh config.
pub trait MeshSource: Send + Sync + 'static {
    /// Reads the whole config; every problem named by file, object and field.
    fn load(&self) -> Result<Mesh, String>;
    /// Something that changes when the config may have changed (polled).
    fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>, u64)>;
    /// What to call it in logs.
    fn describe(&self) -> String;
    /// Where objects applied through the management API are kept (read back by [`MeshSource::load`]),
    /// or `None` to keep them in memory.
    fn api_file(&self) -> Option<PathBuf> {
        None
    }
}

/// The file in a config directory that holds what the management API applied.
pub const API_FILE: &str = "zz-applied-by-api.yaml";

/// The example config built into the binary.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.yaml");

#[derive(Debug)]
pub struct Embedded;

impl MeshSource for Embedded {
    fn load(&self) -> Result<Mesh, String> {
        let mut mesh = Mesh::default();
        mesh.extend_from(
            "the embedded default",
            mesh::parse(EMBEDDED_DEFAULT).map_err(|e| format!("embedded default: {e}"))?,
        );
        Ok(mesh)
    }
    fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
        Vec::new()
    }
    fn describe(&self) -> String {
        "the embedded example config".into()
    }
}

/// Every `*.yaml` / `*.yml` file in a directory, read in name order and merged.
#[derive(Debug)]
pub struct Directory(pub PathBuf);

impl Directory {
    fn files(&self) -> Result<Vec<PathBuf>, String> {
        let entries = std::fs::read_dir(&self.0).map_err(|e| format!("{}: {e}", self.0.display()))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        // What the management API applied comes first, so a pushed route is matched before the
        // files' routes (a catch-all in a file does not hide it); then the files in name order.
        files.sort_by_key(|p| (p.file_name().and_then(|n| n.to_str()) != Some(API_FILE), p.clone()));
        Ok(files)
    }
}

impl MeshSource for Directory {
    fn load(&self) -> Result<Mesh, String> {
        let mut mesh = Mesh::default();
        let mut errors = Vec::new();
        for file in self.files()? {
            match std::fs::read_to_string(&file).map_err(|e| e.to_string()).and_then(|t| mesh::parse(&t)) {
                Ok(part) => mesh.extend_from(&display(&file), part),
                Err(e) => errors.push(format!("{}: {e}", display(&file))),
            }
        }
        if errors.is_empty() { Ok(mesh) } else { Err(errors.join("\n")) }
    }

    fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
        self.files()
            .unwrap_or_default()
            .into_iter()
            .map(|f| {
                let meta = std::fs::metadata(&f).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                (f, modified, meta.map_or(0, |m| m.len()))
            })
            .collect()
    }

    fn describe(&self) -> String {
        format!("config directory {}", self.0.display())
    }

    fn api_file(&self) -> Option<PathBuf> {
        Some(self.0.join(API_FILE))
    }
}

fn display(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}
