//! Atomic file writes: readers never see a half-written file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::RuntimeError;

/// A temporary sibling of `path` in the same directory (so a rename is atomic).
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Writes the file through `fill`, atomically: a temporary file in the same
/// directory, then a rename. On any error the temporary file is removed.
pub(crate) fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), RuntimeError> {
    let tmp = temp_path(path);
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| RuntimeError::io(&tmp, e))?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w).map_err(|e| RuntimeError::io(&tmp, e))?;
        let file = w.into_inner().map_err(|e| RuntimeError::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| RuntimeError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| RuntimeError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("trainyard-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.bin");
        let e = write_atomic_with(&p, |_| Err(std::io::Error::other("boom"))).unwrap_err();
        assert!(e.to_string().contains("boom"));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        write_atomic(&p, b"ok").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"ok");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
