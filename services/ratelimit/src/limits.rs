//! Static limits in the envoyproxy/ratelimit YAML format, for Envoy's native ratelimit
//! filter (descriptors without a limit override):
//!
//! ```yaml
//! domain: sluice
//! descriptors:
//!   - key: tenant
//!     value: team-a          # absent: any value of this key
//!     rate_limit: {unit: minute, requests_per_unit: 100}
//!     descriptors:           # nested: a descriptor with more entries
//!       - key: model
//!         rate_limit: {unit: minute, requests_per_unit: 10}
//! ```

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    /// Window length in seconds (months and years as fixed 30 and 365 days).
    pub fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Week => 604_800,
            Self::Month => 2_592_000,
            Self::Year => 31_536_000,
        }
    }

    /// From the proto enum `envoy.type.v3.RateLimitUnit`.
    pub fn from_proto(v: i32) -> Option<Self> {
        Some(match v {
            1 => Self::Second,
            2 => Self::Minute,
            3 => Self::Hour,
            4 => Self::Day,
            5 => Self::Month,
            6 => Self::Year,
            7 => Self::Week,
            _ => return None,
        })
    }

    pub fn to_proto(self) -> i32 {
        match self {
            Self::Second => 1,
            Self::Minute => 2,
            Self::Hour => 3,
            Self::Day => 4,
            Self::Month => 5,
            Self::Year => 6,
            Self::Week => 7,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub unit: Unit,
    pub requests_per_unit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorConfig {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub descriptors: Vec<DescriptorConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<DescriptorConfig>,
}

impl LimitsFile {
    pub fn parse(yaml: &str) -> Result<Self, String> {
        let file: Self = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        if file.domain.is_empty() {
            return Err("domain must not be empty".into());
        }
        Ok(file)
    }

    /// The limit for a descriptor's entries: each entry walks one level down, an exact
    /// `value` before a key-only (wildcard) match; the limit is the last level's.
    pub fn lookup(&self, domain: &str, entries: &[(String, String)]) -> Option<RateLimit> {
        if domain != self.domain || entries.is_empty() {
            return None;
        }
        let mut level = &self.descriptors;
        let mut found = None;
        for (k, v) in entries {
            let node = level
                .iter()
                .find(|d| &d.key == k && d.value.as_deref() == Some(v.as_str()))
                .or_else(|| level.iter().find(|d| &d.key == k && d.value.is_none()))?;
            found = node.rate_limit;
            level = &node.descriptors;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "
domain: sluice
descriptors:
  - key: tenant
    value: team-a
    rate_limit: {unit: minute, requests_per_unit: 100}
    descriptors:
      - key: model
        rate_limit: {unit: second, requests_per_unit: 5}
  - key: tenant
    rate_limit: {unit: hour, requests_per_unit: 7}
";

    fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn lookup_like_envoyproxy_ratelimit() {
        let f = LimitsFile::parse(YAML).unwrap();
        let l =
            |d: &str, p: &[(&str, &str)]| f.lookup(d, &e(p)).map(|r| (r.unit, r.requests_per_unit));
        assert_eq!(
            l("sluice", &[("tenant", "team-a")]),
            Some((Unit::Minute, 100))
        );
        assert_eq!(l("sluice", &[("tenant", "team-b")]), Some((Unit::Hour, 7)));
        assert_eq!(
            l("sluice", &[("tenant", "team-a"), ("model", "x")]),
            Some((Unit::Second, 5))
        );
        assert_eq!(l("sluice", &[("model", "x")]), None);
        assert_eq!(l("other", &[("tenant", "team-a")]), None);
        assert!(LimitsFile::parse("domain: x\nbogus: 1").is_err());
    }
}
