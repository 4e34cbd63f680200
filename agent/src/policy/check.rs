//! Loading policy from files and directories (`*.yaml`, `*.yml`, recursively, in name
//! order, hidden entries skipped) as `meshd policy check` and the standalone source do:
//! every document validated, every refusal kept, the same object defined twice refused.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{
    compile::PolicySet,
    document::{parse_file, DocumentError, Skipped},
};

/// What a set of paths held.
#[derive(Debug, Default)]
pub struct Loaded {
    pub set: PolicySet,
    pub refused: Vec<DocumentError>,
    pub skipped: Vec<Skipped>,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
}

fn collect(path: &Path, out: &mut Vec<PathBuf>, refused: &mut Vec<DocumentError>) {
    let io_error = |e: std::io::Error| DocumentError {
        file: path.to_owned(),
        line: 0,
        kind: None,
        object: None,
        field: String::new(),
        message: format!("cannot read: {e}"),
    };
    match std::fs::metadata(path) {
        Err(e) => refused.push(io_error(e)),
        Ok(m) if m.is_dir() => match std::fs::read_dir(path) {
            Err(e) => refused.push(io_error(e)),
            Ok(entries) => {
                let mut children: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                children.sort();
                // Hidden entries are not documents: a Kubernetes ConfigMap volume keeps
                // each version of its files in `..data` and `..TIMESTAMP` directories,
                // which would define every object two more times.
                children.retain(|c| {
                    !c.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                });
                for child in children {
                    if child.is_dir() {
                        collect(&child, out, refused);
                    } else if child.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                        out.push(child);
                    }
                }
            }
        },
        Ok(_) => out.push(path.to_owned()),
    }
}

/// The text of every policy file under some paths, as read at one moment: what a watcher
/// compares with the last reading to see a change, and what [`parse`] validates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyFiles {
    /// Each file and its text, in order.
    pub texts: Vec<(PathBuf, String)>,
    /// Paths and files that could not be read.
    pub unreadable: Vec<DocumentError>,
}

/// What changes when a file is written or replaced: size, modification time and inode (a
/// ConfigMap update swaps a symbolic link to new files). `None`: the path cannot be read.
pub type FileStamp = Option<(u64, i64, i64, u64)>;

/// The files under `paths` as [`read`] would take them, each with its [`FileStamp`]: a
/// cheap check (no file is read) of whether any was added, removed or changed.
pub fn stamps(paths: &[PathBuf]) -> Vec<(PathBuf, FileStamp)> {
    use std::os::unix::fs::MetadataExt as _;
    let (mut files, mut unreadable) = (Vec::new(), Vec::new());
    for p in paths {
        collect(p, &mut files, &mut unreadable);
    }
    let mut out: Vec<(PathBuf, FileStamp)> = files
        .into_iter()
        .map(|f| {
            let stamp = std::fs::metadata(&f)
                .ok()
                .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
            (f, stamp)
        })
        .collect();
    out.extend(unreadable.into_iter().map(|e| (e.file, None)));
    out
}

/// Reads every policy file under `paths` (files as named, directories for `*.yaml` and
/// `*.yml`, recursively, in name order).
pub fn read(paths: &[PathBuf]) -> PolicyFiles {
    let mut read = PolicyFiles::default();
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files, &mut read.unreadable);
    }
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => read.texts.push((file, text)),
            Err(e) => read.unreadable.push(DocumentError {
                file,
                line: 0,
                kind: None,
                object: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    read
}

/// Reads and validates every policy document under `paths`.
pub fn load(paths: &[PathBuf]) -> Loaded {
    parse(&read(paths))
}

/// Validates every document of `files`.
pub fn parse(files: &PolicyFiles) -> Loaded {
    let mut loaded = Loaded {
        refused: files.unreadable.clone(),
        ..Loaded::default()
    };
    let mut seen: BTreeMap<(String, String, String), (PathBuf, u64)> = BTreeMap::new();
    for (file, text) in &files.texts {
        let docs = parse_file(file, text);
        loaded.refused.extend(docs.refused);
        loaded.skipped.extend(docs.skipped);
        for located in docs.resources {
            let id = located.resource.id();
            let key = (
                located.resource.kind().to_string(),
                id.namespace.clone(),
                id.name.clone(),
            );
            if let Some((f, l)) = seen.get(&key) {
                loaded.refused.push(DocumentError {
                    file: located.file.clone(),
                    line: located.line,
                    kind: Some(key.0.clone()),
                    object: Some(format!("{}/{}", key.1, key.2)),
                    field: String::new(),
                    message: format!("already defined at {}:{l}", f.display()),
                });
                continue;
            }
            seen.insert(key, (located.file.clone(), located.line));
            loaded.set.resources.push(located.resource);
        }
    }
    loaded.files = files.texts.iter().map(|(f, _)| f.clone()).collect();
    loaded
}

/// Prints what `meshd policy check` shows: every refusal (stderr), every skipped document
/// and a summary (stdout). Returns whether nothing was refused.
pub fn print(loaded: &Loaded) -> bool {
    for s in &loaded.skipped {
        println!("{s}");
    }
    for e in &loaded.refused {
        eprintln!("{e}");
    }
    println!(
        "{} file(s), {} policy resource(s) valid, {} refused, {} skipped",
        loaded.files.len(),
        loaded.set.resources.len(),
        loaded.refused.len(),
        loaded.skipped.len()
    );
    loaded.refused.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out as a Kubernetes ConfigMap volume: the visible files are links
    /// into `..data`, which links to a `..TIMESTAMP` directory. Each object is read once.
    #[test]
    fn a_configmap_volume_is_read_once() {
        let dir = std::env::temp_dir().join(format!("meshd-check-cm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let version = dir.join("..2026_12_02_18_00_00.1");
        std::fs::create_dir_all(&version).unwrap();
        std::fs::write(
            version.join("auth.yaml"),
            "apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {name: a, namespace: shop}\nspec:\n  identities: ['*']\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("..2026_12_02_18_00_00.1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/auth.yaml", dir.join("auth.yaml")).unwrap();
        let loaded = load(std::slice::from_ref(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(loaded.refused.is_empty(), "{:?}", loaded.refused);
        assert_eq!(loaded.set.resources.len(), 1);
        assert_eq!(loaded.files.len(), 1);
    }
}
