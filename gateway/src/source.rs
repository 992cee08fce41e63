//! A policy bundle's sources: its directory read into memory (the only
//! I/O of compiling a bundle), and the problems found in them, located as
//! `file: /json/pointer`. Shared by [`crate::policy`] and [`crate::contract`].

use std::fmt;
use std::path::Path;

/// Is this bundle file a document that policy files refer to (an OpenAPI
/// contract or a JSON Schema) rather than a policy file?
pub fn is_document(path: &str) -> bool {
    path.starts_with("contracts/") || path.starts_with("schemas/") || path.starts_with("keys/")
}

/// Can a change at `path`, under the bundle directory `root`, change what
/// [`load_dir`] reads? Not for hidden files or directories (an editor's
/// swap file, a tool's `.name.tmp` before its rename), nor for an existing
/// file that is not YAML or JSON (`orders.yaml~`). Anything else, and any
/// path it cannot place under `root`, may.
pub fn may_affect_bundle(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else {
        return true;
    };
    if rel
        .components()
        .any(|c| hidden(&c.as_os_str().to_string_lossy()))
    {
        return false;
    }
    if path.is_file() {
        return yaml_or_json(&rel.to_string_lossy());
    }
    true
}

/// A file or directory [`load_dir`] never reads.
fn hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// A file name [`load_dir`] reads.
fn yaml_or_json(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")
}

/// A bundle file's path (relative to the bundle directory) and text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceFile {
    /// Path relative to the bundle root, with `/` separators.
    pub path: String,
    /// File contents.
    pub text: String,
}

/// Read every policy file of `dir`, sorted by path.
pub fn load_dir(dir: &Path) -> Result<Vec<SourceFile>, PolicyErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    if !dir.is_dir() {
        return Err(PolicyErrors(vec![PolicyError::new(
            &dir.display().to_string(),
            "",
            "not a directory",
        )]));
    }
    walk(dir, dir, &mut out, &mut errors);
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    if out.is_empty() {
        return Err(PolicyErrors(vec![PolicyError::new(
            &dir.display().to_string(),
            "",
            "no policy files (*.yaml, *.yml, *.json) found",
        )]));
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<SourceFile>, errors: &mut Vec<PolicyError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(PolicyError::new(
                &dir.display().to_string(),
                "",
                e.to_string(),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if hidden(&name) {
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        if path.is_dir() {
            walk(root, &path, out, errors);
            continue;
        }
        // `policy.schema.json` (any `*.schema.json`) beside the policy files is
        // editor support, not part of the bundle.
        if !yaml_or_json(&name) || (dir == root && name.ends_with(".schema.json")) {
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push(SourceFile { path: rel, text }),
            Err(e) => errors.push(PolicyError::new(&rel, "", format!("cannot read: {e}"))),
        }
    }
}

/// One problem in a policy bundle, located as `file: /json/pointer`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyError {
    /// File path relative to the bundle directory.
    pub file: String,
    /// JSON pointer into the file (`""` for the whole file).
    pub pointer: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl PolicyError {
    /// Build an error.
    pub fn new(file: &str, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{}: {}: {}", self.file, pointer, self.message)
    }
}

/// All problems found in a bundle (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_load_dir_could_read_call_for_a_reload() {
        let root = std::env::temp_dir().join(format!("gh-source-{}", std::process::id()));
        let contracts = root.join("contracts");
        std::fs::create_dir_all(&contracts).expect("mkdir");
        for name in ["a.yaml", "a.yaml~", "notes.txt", ".a.yaml.tmp"] {
            std::fs::write(root.join(name), "x").expect("write");
        }
        std::fs::write(contracts.join("c.json"), "{}").expect("write");
        let affects = |rel: &str| may_affect_bundle(&root, &root.join(rel));
        assert!(affects("a.yaml"));
        assert!(affects("contracts/c.json"));
        assert!(affects("contracts"), "a directory may hold policy files");
        assert!(affects("gone.yaml"), "a removed file may have been one");
        assert!(
            !affects(".a.yaml.tmp"),
            "hidden: a tool's file before its rename"
        );
        assert!(!affects(".git/index"));
        assert!(!affects("a.yaml~"));
        assert!(!affects("notes.txt"));
        assert!(may_affect_bundle(&root, Path::new("/elsewhere/a.yaml")));
        // What `load_dir` reads agrees.
        let read: Vec<String> = load_dir(&root)
            .expect("load")
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(read, ["a.yaml", "contracts/c.json"]);
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
