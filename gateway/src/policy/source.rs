//! Reading a bundle directory into memory (the only I/O of the policy module).

use std::path::Path;

use super::{PolicyError, PolicyErrors};

/// Is this bundle file a document that policy files refer to (an OpenAPI
/// contract or a JSON Schema) rather than a policy file?
pub fn is_document(path: &str) -> bool {
    path.starts_with("contracts/") || path.starts_with("schemas/") || path.starts_with("keys/")
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
        if name.starts_with('.') {
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
        let yaml_or_json =
            name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json");
        // `policy.schema.json` (any `*.schema.json`) beside the policy files is
        // editor support, not part of the bundle.
        if !yaml_or_json || (dir == root && name.ends_with(".schema.json")) {
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push(SourceFile { path: rel, text }),
            Err(e) => errors.push(PolicyError::new(&rel, "", format!("cannot read: {e}"))),
        }
    }
}
