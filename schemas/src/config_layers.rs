//! The one configuration layering of the three binaries (margo-manager,
//! margo-broker, margo-agent): built-in defaults → TOML file → environment
//! (`MARGO_<BINARY>_*`) → command-line flags → validation, with one error
//! type whose validation errors read `FIELD: reason` everywhere.
//!
//! Each binary's configuration implements [`Layered`]: how its file is read,
//! which environment variables it knows and what its flags change. The order
//! of the layers and the refusal of unknown prefixed variables live here, once
//! (`docs/configuration.md`; `docs/decisions/0013-config-layering.md`).
//!
//! No I/O happens here: reading the file is the binary's
//! [`Layered::from_file`], and the environment is passed in.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file (or a file it names) could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid TOML for its configuration (unknown keys included).
    #[error("invalid TOML in {path}: {source}")]
    Toml {
        /// The file (`<text>` for text parsed without a file).
        path: PathBuf,
        /// The parser's error, with line and column.
        source: Box<toml::de::Error>,
    },
    /// A value is invalid: `field` names it as in the file (`broker.url`)
    /// or, for the environment, the whole variable (`MARGO_AGENT_KEEP_ALIVE`).
    #[error("{field}: {reason}")]
    Invalid {
        /// Dotted path of the field, or the environment variable.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration asks for something this build leaves out (only the
    /// agent has optional features: its `--no-default-features` build).
    #[error(
        "{field}: needs the `{feature}` feature, which this margo-agent was built without \
         (rebuild with `--features {feature}` or the default features)"
    )]
    NotBuilt {
        /// The field that needs it.
        field: &'static str,
        /// The Cargo feature.
        feature: &'static str,
    },
}

impl ConfigError {
    /// An [`Invalid`](Self::Invalid) error naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The field (or variable) an [`Invalid`](Self::Invalid) or
    /// [`NotBuilt`](Self::NotBuilt) error names.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            Self::NotBuilt { field, .. } => Some(field),
            Self::Read { .. } | Self::Toml { .. } => None,
        }
    }
}

/// Parses TOML text into `T`; errors name `path`.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Toml {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// A duration as humantime writes it (`30s`, `5m`, `1h 30m`).
pub fn parse_duration(field: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value)
        .map_err(|e| ConfigError::invalid(field, format!("{value:?} is not a duration ({e})")))
}

/// `true`/`1` or `false`/`0`.
pub fn parse_bool(field: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(ConfigError::invalid(
            field,
            format!("{other:?} is not true or false"),
        )),
    }
}

/// A number (or anything else with [`FromStr`]: an address, a port).
pub fn parse_number<T: FromStr>(field: &str, value: &str) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::invalid(field, format!("{value:?} is not a number")))
}

/// A socket address, `host:port` (`127.0.0.1:1883`, `[::1]:8883`).
pub fn parse_socket_addr(field: &str, value: &str) -> Result<std::net::SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::invalid(
            field,
            format!("{value:?} is not an address (ip:port, e.g. 127.0.0.1:1883)"),
        )
    })
}

/// Whether [`Layered::apply_env_var`] knew the variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvVar {
    /// Known and applied.
    Applied,
    /// Not one of this binary's variables: refused by [`Layered::apply_env`].
    Unknown,
}

/// A binary's configuration, built by [`Layered::load_layered`] in the one order:
/// defaults → file → environment → flags → [`Layered::check`].
pub trait Layered: Default {
    /// The environment prefix, `MARGO_AGENT_`; every variable starting with
    /// it must be one of [`ENV_VARS`](Self::ENV_VARS).
    const ENV_PREFIX: &'static str;
    /// The variables this binary reads, without the prefix.
    const ENV_VARS: &'static [&'static str];
    /// What the command line can set.
    type Flags;

    /// Layer 2: the file over the defaults (relative paths resolved against
    /// the file's directory).
    fn from_file(path: &Path) -> Result<Self, ConfigError>;

    /// Layer 3, one variable: `name` without the prefix, `var` the whole
    /// name (for errors). [`EnvVar::Unknown`] for a name it does not know.
    fn apply_env_var(
        &mut self,
        name: &str,
        var: &str,
        value: String,
    ) -> Result<EnvVar, ConfigError>;

    /// Layer 4: the flags given on the command line win.
    fn apply_flags(&mut self, flags: Self::Flags);

    /// Last: every field checked; the error names the first bad one.
    fn check(&self) -> Result<(), ConfigError>;

    /// Layer 3: applies the variables of `vars` that start with
    /// [`ENV_PREFIX`](Self::ENV_PREFIX); an unknown one is an error naming it.
    fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (var, value) in vars {
            let Some(name) = var.strip_prefix(Self::ENV_PREFIX) else {
                continue;
            };
            let name = name.to_string();
            if self.apply_env_var(&name, &var, value)? == EnvVar::Unknown {
                return Err(unknown_variable(&var, Self::ENV_PREFIX, Self::ENV_VARS));
            }
        }
        Ok(())
    }

    /// Every layer in order: defaults, then `file` if given, then the
    /// prefixed variables of `env`, then `flags`; then [`check`](Self::check).
    fn load_layered(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: Self::Flags,
    ) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_env(env)?;
        config.apply_flags(flags);
        config.check()?;
        Ok(config)
    }
}

/// The error for a prefixed variable nobody reads: a typo must not be
/// silently ignored.
fn unknown_variable(var: &str, prefix: &str, known: &[&str]) -> ConfigError {
    let known: Vec<String> = known.iter().map(|name| format!("{prefix}{name}")).collect();
    ConfigError::invalid(
        var,
        format!("unknown variable; known: {}", known.join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with one field per layer kind.
    #[derive(Debug, Default, PartialEq)]
    struct Demo {
        name: String,
        wait: Duration,
        on: bool,
    }

    impl Layered for Demo {
        const ENV_PREFIX: &'static str = "MARGO_DEMO_";
        const ENV_VARS: &'static [&'static str] = &["NAME", "WAIT", "ON"];
        type Flags = Option<String>;

        fn from_file(path: &Path) -> Result<Self, ConfigError> {
            // The "file" is the path itself: `name`.
            Ok(Self {
                name: path.display().to_string(),
                ..Self::default()
            })
        }

        fn apply_env_var(
            &mut self,
            name: &str,
            var: &str,
            value: String,
        ) -> Result<EnvVar, ConfigError> {
            match name {
                "NAME" => self.name = value,
                "WAIT" => self.wait = parse_duration(var, &value)?,
                "ON" => self.on = parse_bool(var, &value)?,
                _ => return Ok(EnvVar::Unknown),
            }
            Ok(EnvVar::Applied)
        }

        fn apply_flags(&mut self, flags: Option<String>) {
            if let Some(name) = flags {
                self.name = name;
            }
        }

        fn check(&self) -> Result<(), ConfigError> {
            if self.name.is_empty() {
                return Err(ConfigError::invalid("name", "must not be empty"));
            }
            Ok(())
        }
    }

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn later_layers_win_file_then_env_then_flags() {
        let file = Demo::load_layered(Some(Path::new("file")), vars(&[]), None).unwrap();
        assert_eq!(file.name, "file");
        let env = Demo::load_layered(
            Some(Path::new("file")),
            vars(&[("MARGO_DEMO_NAME", "env"), ("MARGO_DEMO_ON", "1")]),
            None,
        )
        .unwrap();
        assert_eq!((env.name.as_str(), env.on), ("env", true));
        let flag = Demo::load_layered(
            Some(Path::new("file")),
            vars(&[("MARGO_DEMO_NAME", "env")]),
            Some("flag".into()),
        )
        .unwrap();
        assert_eq!(flag.name, "flag");
        // Defaults alone, then validation last: no file, no env, no flag.
        let err = Demo::load_layered(None, vars(&[]), None).unwrap_err();
        assert_eq!(err.to_string(), "name: must not be empty");
    }

    #[test]
    fn unknown_prefixed_variables_are_refused_by_name_and_others_ignored() {
        let err = Demo::load_layered(
            Some(Path::new("f")),
            vars(&[("PATH", "/bin"), ("MARGO_DEMO_NAMES", "x")]),
            None,
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("MARGO_DEMO_NAMES"));
        let text = err.to_string();
        assert!(
            text.starts_with("MARGO_DEMO_NAMES: unknown variable; known: "),
            "{text}"
        );
        assert!(text.contains("MARGO_DEMO_WAIT"), "{text}");
        // Another binary's prefix is not ours to judge.
        Demo::load_layered(Some(Path::new("f")), vars(&[("MARGO_AGENT_X", "1")]), None).unwrap();
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Demo::load_layered(
            Some(Path::new("f")),
            vars(&[("MARGO_DEMO_WAIT", "soon")]),
            None,
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("MARGO_DEMO_WAIT"));
        assert!(err
            .to_string()
            .starts_with("MARGO_DEMO_WAIT: \"soon\" is not a duration"));
    }

    #[test]
    fn value_parsers() {
        assert_eq!(
            parse_duration("f", "1m 30s").unwrap(),
            Duration::from_secs(90)
        );
        assert!(parse_bool("f", "yes").is_err());
        assert!(parse_bool("f", "0").is_ok_and(|b| !b));
        assert_eq!(parse_number::<u16>("f", "42").unwrap(), 42);
        assert_eq!(
            parse_number::<u16>("f", "70000").unwrap_err().to_string(),
            "f: \"70000\" is not a number"
        );
        assert_eq!(parse_socket_addr("f", "[::1]:1").unwrap().port(), 1);
        assert!(parse_socket_addr("f", "localhost").is_err());
        let err = parse_toml::<toml::Table>("a = ", Path::new("x.toml")).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid TOML in x.toml"),
            "{err}"
        );
        assert_eq!(err.field(), None);
    }
}
