//! Which SQL engine holds the metadata, from `BPF_REGISTRY_METADATA`.

use std::path::{Path, PathBuf};

/// The engine behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }

    /// Connections kept per process. SQLite in WAL mode reads in parallel
    /// and writes one at a time; PostgreSQL serves many of each.
    pub(super) fn pool_size(self) -> u32 {
        match self {
            Engine::Sqlite => 8,
            Engine::Postgres => 32,
        }
    }
}

/// Where the metadata lives.
#[derive(Clone, PartialEq, Eq)]
pub enum MetadataConfig {
    /// `<data dir>/metadata.db`.
    Sqlite { path: PathBuf },
    /// A `postgres://` URL (credentials included: never printed).
    Postgres { url: String },
}

impl std::fmt::Debug for MetadataConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetadataConfig::Sqlite { path } => write!(f, "sqlite:{}", path.display()),
            MetadataConfig::Postgres { .. } => f.write_str("postgres://…"),
        }
    }
}

/// The file name of the embedded store in the data directory.
pub const SQLITE_FILE: &str = "metadata.db";

impl MetadataConfig {
    /// Parses `BPF_REGISTRY_METADATA`: unset or `sqlite` (the embedded
    /// store in the data directory), or a `postgres://` /
    /// `postgresql://` URL.
    pub fn parse(value: Option<&str>, data_dir: &Path) -> Result<MetadataConfig, String> {
        match value.map(str::trim) {
            None | Some("") | Some("sqlite") => Ok(MetadataConfig::Sqlite {
                path: data_dir.join(SQLITE_FILE),
            }),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(MetadataConfig::Postgres {
                    url: url.to_string(),
                })
            }
            Some(_) => {
                Err("BPF_REGISTRY_METADATA must be `sqlite` or a postgres:// URL".to_string())
            }
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            MetadataConfig::Sqlite { .. } => Engine::Sqlite,
            MetadataConfig::Postgres { .. } => Engine::Postgres,
        }
    }

    pub(super) fn url(&self) -> String {
        match self {
            MetadataConfig::Sqlite { path } => format!("sqlite://{}?mode=rwc", path.display()),
            MetadataConfig::Postgres { url } => url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_engines_and_refuses_others() {
        let dir = Path::new("/data");
        assert_eq!(
            MetadataConfig::parse(None, dir).unwrap(),
            MetadataConfig::Sqlite {
                path: dir.join("metadata.db")
            }
        );
        assert_eq!(
            MetadataConfig::parse(Some("sqlite"), dir).unwrap().engine(),
            Engine::Sqlite
        );
        let pg = MetadataConfig::parse(Some("postgres://u:secret@h/db"), dir).unwrap();
        assert_eq!(pg.engine(), Engine::Postgres);
        assert!(!format!("{pg:?}").contains("secret"));
        assert!(MetadataConfig::parse(Some("mysql://x"), dir).is_err());
    }
}
