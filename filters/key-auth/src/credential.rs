//! Finding the one credential of a request among the header styles clients use.

use crate::Denial;

/// Headers that may carry an API key, as sent by OpenAI, Anthropic / Azure and Google SDKs.
/// `authorization` must use the `Bearer` scheme; the others carry the bare key.
pub const CREDENTIAL_HEADERS: [&str; 4] =
    ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// Query parameters that carry credentials in some clients (`?key=`, `?api_key=`, ...).
/// Sluice never accepts a key there, and never forwards one: a backend would log it.
pub const CREDENTIAL_QUERY_PARAMS: [&str; 7] = [
    "key",
    "api_key",
    "api-key",
    "apikey",
    "access_token",
    "token",
    "x-api-key",
];

/// The path without its credential-like query parameters; `None` when there are none.
/// Other parameters stay, in order (Anthropic SDKs send `?beta=true`).
pub fn strip_credential_query(path: &str) -> Option<String> {
    let (path, fragment) = match path.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (path, None),
    };
    let (base, query) = path.split_once('?')?;
    let is_credential = |pair: &str| {
        let name = pair.split('=').next().unwrap_or("");
        CREDENTIAL_QUERY_PARAMS
            .iter()
            .any(|c| name.eq_ignore_ascii_case(c))
    };
    if !query.split('&').any(is_credential) {
        return None;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !is_credential(p))
        .collect();
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Some(out)
}

/// The key a request presented and every header that carried it (to strip before upstream).
#[derive(Debug, PartialEq, Eq)]
pub struct Credential {
    pub key: String,
    pub headers: Vec<String>,
}

/// Extract the credential. Repeating the same key in several headers is accepted (some
/// SDKs send both `authorization` and `api-key`); two different keys are refused, since
/// which one the caller meant is unknowable.
pub fn extract<N: AsRef<str>, V: AsRef<[u8]>>(headers: &[(N, V)]) -> Result<Credential, Denial> {
    let mut found: Option<Credential> = None;
    for (name, value) in headers {
        let name = name.as_ref();
        if !CREDENTIAL_HEADERS.contains(&name) {
            continue;
        }
        let value = std::str::from_utf8(value.as_ref())
            .map_err(|_| Denial::Malformed)?
            .trim();
        let key = if name == "authorization" {
            bearer_token(value).ok_or(Denial::Malformed)?
        } else {
            value
        };
        if key.is_empty() {
            return Err(Denial::Malformed);
        }
        match &mut found {
            None => {
                found = Some(Credential {
                    key: key.to_string(),
                    headers: vec![name.to_string()],
                })
            }
            Some(c) if c.key == key => {
                if !c.headers.iter().any(|h| h == name) {
                    c.headers.push(name.to_string());
                }
            }
            Some(_) => return Err(Denial::Conflicting),
        }
    }
    found.ok_or(Denial::Missing)
}

/// `Bearer <token>`, the scheme case-insensitive (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_query_parameters_are_stripped() {
        for (path, want) in [
            ("/v1/chat/completions", None),
            ("/v1/chat/completions?beta=true", None),
            (
                "/v1/chat/completions?api_key=sk-1",
                Some("/v1/chat/completions"),
            ),
            (
                "/v1/messages?beta=true&key=sk-1",
                Some("/v1/messages?beta=true"),
            ),
            ("/x?KEY=a&b=c&token=t&d", Some("/x?b=c&d")),
            ("/x?keys=1", None),
            ("/x#a?key=b", None),
            ("/x?key=a#b?key=c", Some("/x#b?key=c")),
        ] {
            assert_eq!(strip_credential_query(path).as_deref(), want, "{path}");
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn every_header_style() {
        for (name, value) in [
            ("authorization", "Bearer sk-1"),
            ("authorization", "bearer   sk-1"),
            ("x-api-key", "sk-1"),
            ("api-key", " sk-1 "),
            ("x-goog-api-key", "sk-1"),
        ] {
            let c = extract(&h(&[("host", "x"), (name, value)])).unwrap();
            assert_eq!(c.key, "sk-1", "{name}: {value}");
            assert_eq!(c.headers, vec![name.to_string()]);
        }
    }

    #[test]
    fn refusals() {
        let table: &[(&[(&str, &str)], Denial)] = &[
            (&[], Denial::Missing),
            (&[("host", "x")], Denial::Missing),
            (&[("authorization", "Basic dTpw")], Denial::Malformed),
            (&[("authorization", "Bearer")], Denial::Malformed),
            (&[("authorization", "Bearer ")], Denial::Malformed),
            (&[("x-api-key", "")], Denial::Malformed),
            (
                &[("authorization", "Bearer sk-1"), ("x-api-key", "sk-2")],
                Denial::Conflicting,
            ),
            (
                &[
                    ("authorization", "Bearer sk-1"),
                    ("authorization", "Bearer sk-2"),
                ],
                Denial::Conflicting,
            ),
        ];
        for (headers, want) in table {
            assert_eq!(extract(&h(headers)), Err(*want), "{headers:?}");
        }
        let non_utf8 = vec![("x-api-key".to_string(), vec![0xff, 0xfe])];
        assert_eq!(extract(&non_utf8), Err(Denial::Malformed));
    }

    #[test]
    fn same_key_twice_is_one_credential() {
        let c = extract(&h(&[("authorization", "Bearer sk-1"), ("api-key", "sk-1")])).unwrap();
        assert_eq!(c.key, "sk-1");
        assert_eq!(c.headers, vec!["authorization", "api-key"]);
    }
}
