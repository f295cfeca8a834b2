//! Where the sluice binaries are.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The directory holding `sluice-proxy`, `sluice-broker`, … : `$SLUICE_BIN_DIR`, else the
/// cargo target directory the running executable was built into (tests live in
/// `target/<profile>/deps`, binaries one level up).
pub fn bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("SLUICE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The path of one sluice binary, checked to exist.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build the binaries first (`cargo build --workspace --bins`) or set SLUICE_BIN_DIR",
            path.display()
        );
    }
    Ok(path)
}

/// `redis-server` from PATH, with a clear message when it is missing.
pub fn redis_server() -> Result<PathBuf> {
    which("redis-server").ok_or_else(|| {
        anyhow::anyhow!("redis-server is not on PATH: install it (Debian: apt-get install redis-server)")
    })
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
