//! Loading a service's configuration: defaults, then an optional TOML file, then environment
//! variables (`<PREFIX>_<KEY>`, nested keys joined with `__`).
use std::path::Path;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Loads `T` from its defaults, `file` (if given; it must exist) and the environment.
///
/// Example: with prefix `NIGHTSHIFT_MANAGER`, `NIGHTSHIFT_MANAGER_DATABASE_URL` sets
/// `database_url`.
pub fn load<T>(file: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError>
where
    T: serde::de::DeserializeOwned + serde::Serialize + Default,
{
    use figment::Figment;
    use figment::providers::{Env, Format, Serialized, Toml};
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError(format!("config file {} does not exist", path.display())));
        }
        fig = fig.merge(Toml::file(path));
    }
    // `<PREFIX>_CONFIG` names the file itself (the binaries' `--config` flag reads it); it is
    // not a key of the options.
    fig = fig.merge(Env::prefixed(&format!("{env_prefix}_")).ignore(&["config"]).split("__"));
    fig.extract().map_err(|e| ConfigError(e.to_string()))
}

/// Serde adapter for durations written as humantime text (`30s`, `5m`) in TOML files and
/// environment variables: `#[serde(with = "nightshift_core::config::duration_text")]`.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `30s`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Reads `30s`, `5m`, `1h30m`. The error quotes the value, so that it points at the key even
    /// where serde cannot name it (keys of flattened sections).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    /// Parses humantime text (or bare seconds) as manifests do, with an error that quotes it;
    /// a negative value is refused.
    pub fn parse(text: &str) -> Result<Duration, String> {
        match crate::duration::parse_signed(text)? {
            d if d.negative && !d.abs.is_zero() => Err(format!("'{text}' must not be negative")),
            d => Ok(d.abs),
        }
    }
}

/// Serde adapter for optional durations as humantime text; empty text means none:
/// `#[serde(with = "nightshift_core::config::optional_duration_text")]`.
pub mod optional_duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `7days`, or `""` for none.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_text::serialize(d, s),
            None => s.serialize_str(""),
        }
    }

    /// Reads `7d`, or `""` as none.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        super::duration_text::parse(&text).map(Some).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter for a map of names to humantime durations (`{ http_get = "5s" }`):
/// `#[serde(with = "nightshift_core::config::duration_text_map")]`.
pub mod duration_text_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes each value as `5s`.
    pub fn serialize<S: Serializer>(m: &BTreeMap<String, Duration>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k, humantime::format_duration(*v).to_string())))
    }

    /// Reads each value as humantime text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Duration>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| super::duration_text::parse(&v).map(|d| (k, d)).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Options {
        listen: String,
    }

    #[test]
    fn durations_parse_like_manifests_and_refuse_negatives() {
        use std::time::Duration;
        assert_eq!(duration_text::parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration_text::parse("30"), Ok(Duration::from_secs(30)));
        assert!(duration_text::parse("-5s").unwrap_err().contains("negative"));
        assert!(duration_text::parse("soon").unwrap_err().contains("'soon'"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure signature
    fn the_config_file_variable_is_not_a_key() {
        // figment's Jail gives the test its own environment (restored afterwards).
        figment::Jail::expect_with(|jail| {
            jail.set_env("NS_CONFIG_TEST_CONFIG", "/etc/nightshift/x.toml");
            jail.set_env("NS_CONFIG_TEST_LISTEN", "127.0.0.1:1");
            let o: Options = load(None, "NS_CONFIG_TEST").map_err(|e| e.to_string())?;
            assert_eq!(o.listen, "127.0.0.1:1");
            jail.set_env("NS_CONFIG_TEST_LISTN", "typo");
            let err = load::<Options>(None, "NS_CONFIG_TEST").unwrap_err().to_string();
            assert!(err.contains("listn"), "{err}");
            Ok(())
        });
    }
}
