//! Filter configuration parsing: one JSON document per filter, parsed and validated once.

use serde::de::DeserializeOwned;

/// Why a filter configuration was refused. The message is meant for Envoy's log: it names
/// the field and position, and never echoes secret values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration is empty")]
    Empty,
    #[error("configuration is not valid JSON for this filter: {0}")]
    Syntax(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// A configuration that parsed but says something impossible.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}

/// `#[serde(default = "sluice_common::config::yes")]`: a switch that is on unless set off.
pub fn yes() -> bool {
    true
}

/// Parse a filter's JSON configuration. An absent or whitespace-only configuration is an
/// error: every Sluice filter needs one, and a silently empty policy would fail open.
pub fn parse_config<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::Empty);
    }
    serde_json::from_slice(bytes).map_err(|e| ConfigError::Syntax(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            parse_config::<Sample>(br#"{"name":"a"}"#),
            Ok(Sample { name: "a".into() })
        );
        assert_eq!(parse_config::<Sample>(b"  \n"), Err(ConfigError::Empty));
        let unknown = parse_config::<Sample>(br#"{"name":"a","extra":1}"#).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `extra`"),
            "{unknown}"
        );
        assert!(matches!(
            parse_config::<Sample>(b"{"),
            Err(ConfigError::Syntax(_))
        ));
    }
}
