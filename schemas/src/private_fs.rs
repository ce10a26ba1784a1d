//! Directories and files only their owner may read, whatever the umask
//! (issue 12, finding 11): the umask can only remove bits from the mode
//! given at creation, so the mode is set again right after. Used by the
//! manager (data directory, store, identity bundles) and the agent (data
//! directory, store, onboarding identity).

use std::fs;
use std::io;
use std::path::Path;

/// Mode of every directory we create.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file holding keys, state or tokens.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents, each one created here 0700. A
/// directory that exists already keeps its mode (the operator's choice).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|p| !p.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir)?;
    #[cfg(unix)]
    for created in missing {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(created, fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Makes `path` a 0600 file: created empty if missing (redb initialises an
/// empty file), its mode set to 0600 if it exists already.
pub fn prepare_file(path: &Path) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_missing_parents_private_and_leaves_existing_ones() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let leaf = dir.path().join("a/b");
        create_dir_all(&leaf).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&leaf), 0o700);
        assert_eq!(
            mode(dir.path()),
            0o755,
            "an existing directory keeps its mode"
        );
        create_dir_all(&leaf).unwrap();
    }

    #[test]
    fn prepares_a_private_file_and_keeps_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.redb");
        prepare_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        fs::write(&file, b"data").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        prepare_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(fs::read(&file).unwrap(), b"data");
    }
}
