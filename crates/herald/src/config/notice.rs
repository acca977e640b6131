//! `Notice`: what loading the configuration tells the operator besides errors: the files taken from the working
//! directory (as crossroads took them), and what of crossroads' `config.yml` herald ignores or overrides. Each
//! is one line that names files and keys, never values.

use std::fmt;
use std::path::PathBuf;

use crate::config::error::one_line;

/// One thing worth a log line about how the configuration was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A file read because it was in the working directory; `what` says as what.
    Found { path: PathBuf, what: String },
    /// A `config.yml` in the working directory without the environment's section, so not crossroads': unread.
    NotCrossroads { path: PathBuf, environment: String },
    /// Keys of crossroads' `config.yml` that herald has no use for.
    Ignored { path: PathBuf, keys: Vec<String> },
    /// A setting of crossroads' `config.yml` that the environment or a flag replaces.
    Overridden {
        path: PathBuf,
        key: String,
        by: &'static str,
    },
}

impl Notice {
    /// Whether the operator may have to act (a warning), rather than only know.
    pub fn is_warning(&self) -> bool {
        !matches!(self, Notice::Found { .. })
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Found { path, what } => write!(
                f,
                "{}: found in the working directory, read as {what}",
                one_line(path.display())
            ),
            Notice::NotCrossroads { path, environment } => write!(
                f,
                "{}: found in the working directory, but not read as crossroads' config.yml: it has no `{}` \
                 section (NODE_ENV)",
                one_line(path.display()),
                one_line(environment)
            ),
            Notice::Ignored { path, keys } => {
                write!(f, "{}: herald has no use for ", one_line(path.display()))?;
                for (at, key) in keys.iter().enumerate() {
                    let comma = if at == 0 { "" } else { ", " };
                    write!(f, "{comma}{}", one_line(key))?;
                }
                f.write_str("; ignored")
            }
            Notice::Overridden { path, key, by } => write!(
                f,
                "{}: {} is overridden by {by}",
                one_line(path.display()),
                one_line(key)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_notice_is_one_line() {
        let cases = [
            (
                Notice::Found {
                    path: "config.yml".into(),
                    what: "crossroads' config.yml (section production)".into(),
                },
                "config.yml: found in the working directory, read as crossroads' config.yml (section production)",
                false,
            ),
            (
                Notice::NotCrossroads {
                    path: "./config.yml".into(),
                    environment: "production".into(),
                },
                "./config.yml: found in the working directory, but not read as crossroads' config.yml: it has \
                 no `production` section (NODE_ENV)",
                true,
            ),
            (
                Notice::Ignored {
                    path: "config.yml".into(),
                    keys: vec!["production.flakeid".into(), "production.ser\nvers".into()],
                },
                "config.yml: herald has no use for production.flakeid, production.ser\\nvers; ignored",
                true,
            ),
            (
                Notice::Overridden {
                    path: "config.yml".into(),
                    key: "production.port".into(),
                    by: "PORT",
                },
                "config.yml: production.port is overridden by PORT",
                true,
            ),
        ];
        for (notice, text, warning) in cases {
            assert_eq!(notice.to_string(), text);
            assert_eq!(notice.is_warning(), warning, "{text}");
        }
    }
}
