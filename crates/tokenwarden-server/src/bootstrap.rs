//! Resolving the configuration to run with, including the embedded first-run default.
//!
//! With a configuration file, the file (plus environment) is the whole truth and must be
//! complete. Without one, `tokenwarden serve` must work on a fresh machine: the database, a
//! generated encryption key (file mode 0600) and the SHA-256 of a generated admin API key live
//! under a private data directory (mode 0700, `./tokenwarden-data` by default). The admin key
//! itself is returned once, for printing, and never stored.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::auth;
use crate::config::{self, Config, ConfigError, ConfigSecret};

/// Default data directory of the embedded mode, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "tokenwarden-data";
/// Key id of the generated encryption key.
pub const GENERATED_KEY_ID: &str = "local";
const KEY_FILE: &str = "encryption.key";
const ADMIN_HASH_FILE: &str = "admin-api-key.sha256";

/// What to run with.
pub struct Resolved {
    pub config: Config,
    pub source: config::Source,
    /// Set only on the start that generated it: print it once, it is stored nowhere.
    pub generated_admin_key: Option<String>,
    /// The file holding the admin key's hash, in embedded mode.
    pub admin_hash_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("config", &self.config)
            .field("source", &self.source)
            .field(
                "generated_admin_key",
                &self.generated_admin_key.as_ref().map(|_| "[REDACTED]"),
            )
            .field("admin_hash_file", &self.admin_hash_file)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// Loads the configuration for `serve` (`need_api_keys`) or a CLI command (no API keys).
pub fn resolve(
    config_path: Option<&Path>,
    data_dir: &Path,
    env: Vec<(String, String)>,
    need_api_keys: bool,
) -> Result<Resolved, ConfigError> {
    if let Some(path) = config_path {
        let config = config::load(Some(path), env)?;
        validate(&config, need_api_keys)?;
        return Ok(Resolved {
            config,
            source: config::Source::File(path.to_owned()),
            generated_admin_key: None,
            admin_hash_file: None,
            data_dir: None,
        });
    }

    let database_overridden = env.iter().any(|(k, _)| k == "TOKENWARDEN_DATABASE_URL");
    let mut config = config::load(None, env)?;
    let io = |path: &Path, e: std::io::Error| ConfigError::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    if !data_dir.exists() {
        create_private_dir(data_dir).map_err(|e| io(data_dir, e))?;
    }
    if !database_overridden {
        config.database_url = sqlite_url(&data_dir.join("tokenwarden.db"));
    }
    if config.encryption.keys.is_empty() {
        let path = data_dir.join(KEY_FILE);
        let key = match fs::read_to_string(&path) {
            Ok(text) => text.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = tokenwarden::KeyRing::generate_key_base64();
                write_private(&path, &format!("{key}\n")).map_err(|e| io(&path, e))?;
                key
            }
            Err(e) => return Err(io(&path, e)),
        };
        config
            .encryption
            .keys
            .insert(GENERATED_KEY_ID.to_owned(), ConfigSecret::new(key));
        config.encryption.active_key = Some(GENERATED_KEY_ID.to_owned());
    }
    let mut generated_admin_key = None;
    let mut admin_hash_file = None;
    if need_api_keys && config.auth.api_keys.is_empty() {
        let path = data_dir.join(ADMIN_HASH_FILE);
        let hash = match fs::read_to_string(&path) {
            Ok(text) => text.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = auth::generate_key();
                let hash = auth::hash_for_config(&key);
                write_private(&path, &format!("{hash}\n")).map_err(|e| io(&path, e))?;
                generated_admin_key = Some(key);
                hash
            }
            Err(e) => return Err(io(&path, e)),
        };
        auth::parse_configured_key(&hash).map_err(|message| ConfigError::File {
            path: path.clone(),
            message: format!("{message} (delete the file to generate a new admin key)"),
        })?;
        config.auth.api_keys.push(ConfigSecret::new(hash));
        admin_hash_file = Some(path);
    }
    validate(&config, need_api_keys)?;
    Ok(Resolved {
        config,
        source: config::Source::Embedded,
        generated_admin_key,
        admin_hash_file,
        data_dir: Some(data_dir.to_owned()),
    })
}

fn validate(config: &Config, need_api_keys: bool) -> Result<(), ConfigError> {
    if need_api_keys {
        config.validate()
    } else {
        // CLI commands talk to the database directly and need no API key.
        let mut copy = config.clone();
        copy.auth.api_keys = vec![ConfigSecret::new(auth::hash_for_config("cli"))];
        copy.validate()
    }
}

/// `sqlite://` URL of a path (`sqlite:///abs` for absolute paths).
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Creates a directory (and parents) readable only by the owner.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// Writes a new file readable only by the owner; fails if it exists.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// The one-time banner for a generated admin key. Loud on purpose: this is a development
/// default, and the key is shown nowhere else.
pub fn first_run_banner(key: &str, resolved: &Resolved) -> String {
    let listen = resolved.config.listen;
    let hash_file = resolved
        .admin_hash_file
        .as_ref()
        .map_or_else(String::new, |p| p.display().to_string());
    let data_dir = resolved
        .data_dir
        .as_ref()
        .map_or_else(String::new, |p| p.display().to_string());
    format!(
        "\n\
         ==========================================================================\n\
         !! tokenwarden is running on its LOCAL DEVELOPMENT DEFAULT (no config file)\n\
         !! A new admin API key was generated. It is shown ONCE, here, and only its\n\
         !! SHA-256 is stored ({hash_file}). Copy it now:\n\
         \n\
         \x20   {key}\n\
         \n\
         !! Try: curl -H \"Authorization: Bearer {key}\" http://{listen}/v1/providers\n\
         !! Data (database, encryption key): {data_dir}\n\
         !! For production write a config file and run `tokenwarden serve --config FILE`.\n\
         ==========================================================================\n"
    )
}

/// The line printed on later embedded starts instead of a key.
pub fn reuse_notice(resolved: &Resolved) -> Option<String> {
    let path = resolved.admin_hash_file.as_ref()?;
    Some(format!(
        "tokenwarden: local development default; the admin API key's SHA-256 is in {} \
         (the key was printed on the first start; delete that file and restart to generate \
         a new key)",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_run_generates_then_reuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let first = resolve(None, &data, vec![], true).expect("first");
        let key = first.generated_admin_key.clone().expect("generated");
        assert!(first.config.database_url.starts_with("sqlite:///"));
        let second = resolve(None, &data, vec![], true).expect("second");
        assert!(second.generated_admin_key.is_none());
        assert_eq!(
            first.config.encryption.keys[GENERATED_KEY_ID],
            second.config.encryption.keys[GENERATED_KEY_ID]
        );
        let keys = auth::ApiKeys::from_config(
            second
                .config
                .auth
                .api_keys
                .iter()
                .map(ConfigSecret::expose_secret),
        )
        .expect("keys");
        assert!(keys.check_key(key.as_bytes()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&data), 0o700);
            assert_eq!(mode(&data.join(KEY_FILE)), 0o600);
        }
    }
}
