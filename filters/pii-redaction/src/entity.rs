//! The built-in entity types and sets of them.

use serde::{Deserialize, Serialize};

/// A built-in entity type. Names (`email`, ...) are the configuration keys and the keys of
/// `sluice_pii`; labels (`EMAIL`, ...) appear in placeholders such as `[EMAIL_1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltIn {
    Email,
    Phone,
    Ssn,
    CreditCard,
    Iban,
    Ipv4,
    Ipv6,
    AwsAccessKey,
    GithubToken,
    OpenaiKey,
    AnthropicKey,
    GoogleApiKey,
    SlackToken,
    Jwt,
    PrivateKey,
}

impl BuiltIn {
    pub const ALL: [BuiltIn; 15] = [
        BuiltIn::Email,
        BuiltIn::Phone,
        BuiltIn::Ssn,
        BuiltIn::CreditCard,
        BuiltIn::Iban,
        BuiltIn::Ipv4,
        BuiltIn::Ipv6,
        BuiltIn::AwsAccessKey,
        BuiltIn::GithubToken,
        BuiltIn::OpenaiKey,
        BuiltIn::AnthropicKey,
        BuiltIn::GoogleApiKey,
        BuiltIn::SlackToken,
        BuiltIn::Jwt,
        BuiltIn::PrivateKey,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltIn::Email => "email",
            BuiltIn::Phone => "phone",
            BuiltIn::Ssn => "ssn",
            BuiltIn::CreditCard => "credit_card",
            BuiltIn::Iban => "iban",
            BuiltIn::Ipv4 => "ipv4",
            BuiltIn::Ipv6 => "ipv6",
            BuiltIn::AwsAccessKey => "aws_access_key",
            BuiltIn::GithubToken => "github_token",
            BuiltIn::OpenaiKey => "openai_key",
            BuiltIn::AnthropicKey => "anthropic_key",
            BuiltIn::GoogleApiKey => "google_api_key",
            BuiltIn::SlackToken => "slack_token",
            BuiltIn::Jwt => "jwt",
            BuiltIn::PrivateKey => "private_key",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Credentials rather than personal data (reported together in the accuracy table).
    pub fn is_secret(self) -> bool {
        matches!(
            self,
            BuiltIn::AwsAccessKey
                | BuiltIn::GithubToken
                | BuiltIn::OpenaiKey
                | BuiltIn::AnthropicKey
                | BuiltIn::GoogleApiKey
                | BuiltIn::SlackToken
                | BuiltIn::Jwt
                | BuiltIn::PrivateKey
        )
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of built-in entity types (a bit set: the scanner tests it per candidate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntitySet(u32);

impl EntitySet {
    pub fn all() -> Self {
        BuiltIn::ALL.into_iter().collect()
    }

    pub fn contains(self, e: BuiltIn) -> bool {
        self.0 & e.bit() != 0
    }

    pub fn insert(&mut self, e: BuiltIn) {
        self.0 |= e.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Any of the numeric entities (phone, SSN, card, IPv4): digits start a candidate.
    pub(crate) fn any_numeric(self) -> bool {
        [
            BuiltIn::Phone,
            BuiltIn::Ssn,
            BuiltIn::CreditCard,
            BuiltIn::Ipv4,
        ]
        .into_iter()
        .any(|e| self.contains(e))
    }
}

impl FromIterator<BuiltIn> for EntitySet {
    fn from_iter<I: IntoIterator<Item = BuiltIn>>(iter: I) -> Self {
        let mut s = EntitySet::default();
        for e in iter {
            s.insert(e);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sets_work() {
        for e in BuiltIn::ALL {
            assert_eq!(BuiltIn::from_name(e.name()), Some(e));
            assert_eq!(
                serde_json::to_string(&e).unwrap(),
                format!("\"{}\"", e.name())
            );
        }
        let s: EntitySet = [BuiltIn::Email, BuiltIn::Jwt].into_iter().collect();
        assert!(s.contains(BuiltIn::Jwt) && !s.contains(BuiltIn::Phone));
        assert!(!s.any_numeric());
        assert!(EntitySet::all().any_numeric());
        assert!(EntitySet::default().is_empty());
    }
}
