//! Where the runner finds the files it does not ship: the model and tokenizer
//! (`stories260K.bin`, `tok512.bin`) and the evaluation text.
//!
//! A path given on the command line wins. Otherwise a model file is looked up
//! in `$H2O_KV_MODELS`, then `./models/`, then `../shared/models/`; a data file
//! in `$H2O_KV_DATA`, then `./data/`, then `../shared/data/`. The relative
//! folders are tried from the current directory and from the workspace root,
//! so `cargo run` and `cargo test` work from anywhere in the checkout.

use std::path::{Path, PathBuf};

/// What a model or data file is, for lookups and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A checkpoint or tokenizer (`$H2O_KV_MODELS`, `models/`).
    Model,
    /// Evaluation text (`$H2O_KV_DATA`, `data/`).
    Data,
}

impl Kind {
    fn variable(self) -> &'static str {
        match self {
            Kind::Model => "H2O_KV_MODELS",
            Kind::Data => "H2O_KV_DATA",
        }
    }

    fn folder(self) -> &'static str {
        match self {
            Kind::Model => "models",
            Kind::Data => "data",
        }
    }
}

/// Where to get the files when they are missing.
pub const HINT: &str = "stories260K.bin and tok512.bin come from huggingface.co/karpathy/tinyllamas \
     (folder stories260K/); put them in ./models/ or ../shared/models/, point $H2O_KV_MODELS at \
     their folder, or pass --model and --tokenizer";

/// The folders searched for a file of `kind`, in order.
pub fn search_path(kind: Kind) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(kind.variable()) {
        dirs.push(PathBuf::from(dir));
    }
    for folder in [PathBuf::from(kind.folder()), Path::new("../shared").join(kind.folder())] {
        dirs.push(Path::new(".").join(&folder));
        dirs.push(root.join(&folder));
    }
    dirs
}

/// The first existing `name` in [`search_path`], or `None`.
pub fn find(kind: Kind, name: &str) -> Option<PathBuf> {
    search_path(kind).into_iter().map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// [`find`], or the first candidate when none exists (so that opening it
/// reports a clear "not found" with a path).
pub fn find_or_first(kind: Kind, name: &str) -> PathBuf {
    find(kind, name).unwrap_or_else(|| search_path(kind)[0].join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_path_ends_with_the_shared_folder() {
        let dirs = search_path(Kind::Data);
        assert!(dirs.len() >= 4);
        assert!(dirs.last().unwrap().ends_with("../shared/data"));
        assert!(dirs.iter().any(|d| d.ends_with("./data")));
    }

    #[test]
    fn a_missing_file_is_not_found() {
        assert_eq!(find(Kind::Model, "no-such-model-file.bin"), None);
        assert!(find_or_first(Kind::Model, "x.bin").ends_with("x.bin"));
    }
}
