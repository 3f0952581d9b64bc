//! The rules file on disk: which file (`--rules`, else the system one) and
//! its text, handed to [`crate::config`], which parses text and reads no
//! file. The daemon, `conntrackd replay` and `conntrackd check` all read it
//! here.

use crate::config::{Config, ConfigError, ShellTable};
use std::path::{Path, PathBuf};

/// The rules file when `--rules` is not given: the packaged one. Never a
/// path relative to the current directory, so that what a server enforces
/// does not depend on where it was started from.
pub const SYSTEM_RULES: &str = "/etc/conntrackd/rules.toml";

/// A rules file that could not be read, or not used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl Error {
    /// One line per problem, each `file:line:column: message`; one line,
    /// `file: why`, when the file could not be read.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Error::Read { .. } => vec![self.to_string()],
            Error::Invalid(e) => e.lines(),
        }
    }
}

/// The rules file to use: `--rules`, else [`SYSTEM_RULES`]; an error telling
/// the operator to pass `--rules` when neither is there.
pub fn path(arg: Option<&Path>) -> Result<PathBuf, String> {
    path_or(arg, Path::new(SYSTEM_RULES))
}

fn path_or(arg: Option<&Path>, system: &Path) -> Result<PathBuf, String> {
    if let Some(path) = arg {
        return Ok(path.to_path_buf());
    }
    // Anything but a clear "not there" (permission denied, say) goes on to
    // load, whose error names the real cause.
    if system.try_exists().unwrap_or(true) {
        return Ok(system.to_path_buf());
    }
    Err(format!(
        "no rules file: {} does not exist; pass --rules FILE (in a source checkout: \
         --rules rules/default.toml)",
        system.display()
    ))
}

/// Reads and parses the rules file, its `[daemon]` table ignored (see
/// [`Config::parse`]).
pub fn load(path: &Path) -> Result<Config, Error> {
    Ok(Config::parse(&read(path)?, path)?)
}

/// Reads and parses the rules file, and its `[daemon]` table as a `D` (see
/// [`Config::parse_with`]).
pub fn load_with<D: ShellTable>(path: &Path) -> Result<(Config, D), Error> {
    Ok(Config::parse_with(&read(path)?, path)?)
}

/// Reads and parses the rules file, its `[daemon]` table as a `D` and its
/// `[cluster]` table, if any, as a `C` (see [`Config::parse_shell`]).
pub fn load_shell<D: ShellTable, C: ShellTable>(
    path: &Path,
) -> Result<(Config, D, Option<C>), Error> {
    Ok(Config::parse_shell(&read(path)?, path)?)
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_the_argument_else_the_system_file_never_the_current_directory() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/default.toml");
        let absent = Path::new("/nonexistent/conntrackd/rules.toml");
        // --rules wins, even over an existing system file, and is not checked here.
        assert_eq!(
            path_or(Some(absent), &shipped).unwrap(),
            PathBuf::from(absent)
        );
        assert_eq!(path_or(None, &shipped).unwrap(), shipped);
        let e = path_or(None, absent).unwrap_err();
        assert!(
            e.contains("/nonexistent/conntrackd/rules.toml does not exist"),
            "{e}"
        );
        assert!(e.contains("pass --rules FILE"), "{e}");
        assert!(e.contains("--rules rules/default.toml"), "{e}");
    }

    #[test]
    fn a_missing_file_is_one_line_that_names_it() {
        let e = load(Path::new("/nonexistent/rules.toml")).unwrap_err();
        let lines = e.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("/nonexistent/rules.toml: "), "{e}");
        assert_eq!(lines[0], e.to_string());
    }

    #[test]
    fn a_file_is_parsed_as_its_text_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.toml");
        let text = "[daemon]\nqueues = \"x\"\n[policy]\ndefault = \"drop\"\n[[rule]]\n\
                    name = \"a\"\nactoin = \"drop\"\n";
        std::fs::write(&file, text).unwrap();
        let read = load(&file).unwrap_err();
        let given = Config::parse(text, &file).unwrap_err();
        assert_eq!(read.lines(), given.lines());
        assert_eq!(read.to_string(), given.to_string());
        std::fs::write(&file, "[policy]\ndefault = \"drop\"\n").unwrap();
        let (config, _) = load_with::<serde::de::IgnoredAny>(&file).unwrap();
        assert_eq!(config.path, file);
    }
}
