//! The OpenAI-style error body that every reply Sluice makes itself carries.
//!
//! ```json
//! {"error": {"message": "...", "type": "...", "param": null, "code": "..."}}
//! ```

use serde::Serialize;

/// The rejection classes of DESIGN.md, each with its HTTP status and OpenAI `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: malformed JSON, missing or non-string `model`, bad field.
    InvalidRequest,
    /// 401: missing, unknown, expired or disabled key.
    Authentication,
    /// 403: key may not use this model / route; PII policy `block`.
    Permission,
    /// 404: unknown model.
    ModelNotFound,
    /// 413: body over the configured limit.
    PayloadTooLarge,
    /// 429: any limit.
    RateLimited,
    /// 503: no healthy backend, rate-limit service down under `deny`.
    Unavailable,
    /// 500: the backend failed while serving the request (an engine's own error).
    ServerError,
}

impl ErrorKind {
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Authentication => 401,
            Self::Permission => 403,
            Self::ModelNotFound => 404,
            Self::PayloadTooLarge => 413,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::ServerError => 500,
        }
    }

    /// The OpenAI `error.type`.
    pub const fn error_type(self) -> &'static str {
        match self {
            Self::InvalidRequest | Self::ModelNotFound | Self::PayloadTooLarge => {
                "invalid_request_error"
            }
            Self::Authentication => "authentication_error",
            Self::Permission => "permission_error",
            Self::RateLimited => "rate_limit_error",
            Self::Unavailable | Self::ServerError => "server_error",
        }
    }
}

impl ErrorKind {
    /// Anthropic's `error.type` for the same class.
    pub const fn anthropic_type(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::Permission => "permission_error",
            Self::ModelNotFound => "not_found_error",
            Self::PayloadTooLarge => "request_too_large",
            Self::RateLimited => "rate_limit_error",
            Self::Unavailable | Self::ServerError => "api_error",
        }
    }
}

/// One error reply. Build it with [`OpenAiError::new`], then [`OpenAiError::body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiError {
    pub kind: ErrorKind,
    /// Shown to the client: never the key, the prompt or PII.
    pub message: String,
    /// Machine-readable `error.code`, e.g. `invalid_api_key`, `model_not_found`.
    pub code: Option<String>,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    error_type: &'static str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl OpenAiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            code: None,
            param: None,
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The JSON body, escaped by serde_json so any message is safe to embed.
    pub fn body(&self) -> String {
        let envelope = Envelope {
            error: Inner {
                message: &self.message,
                error_type: self.kind.error_type(),
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        // Serializing a struct of strings cannot fail; fall back to a fixed body rather
        // than panic if it ever did.
        serde_json::to_string(&envelope).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#
                .to_string()
        })
    }

    /// The body in the shape of `family`'s API: OpenAI's, or Anthropic's
    /// `{"type":"error","error":{"type","message"}}`.
    pub fn body_for(&self, family: crate::api::Family) -> String {
        match family {
            crate::api::Family::OpenAi => self.body(),
            crate::api::Family::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": self.kind.anthropic_type(), "message": self.message},
            })
            .to_string(),
        }
    }

    /// Headers of the reply; callers add their own (`www-authenticate`, `retry-after`, ...).
    pub const CONTENT_TYPE: (&'static str, &'static str) = ("content-type", "application/json");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn status_and_type_table() {
        let table = [
            (ErrorKind::InvalidRequest, 400, "invalid_request_error"),
            (ErrorKind::Authentication, 401, "authentication_error"),
            (ErrorKind::Permission, 403, "permission_error"),
            (ErrorKind::ModelNotFound, 404, "invalid_request_error"),
            (ErrorKind::PayloadTooLarge, 413, "invalid_request_error"),
            (ErrorKind::RateLimited, 429, "rate_limit_error"),
            (ErrorKind::Unavailable, 503, "server_error"),
        ];
        for (kind, status, ty) in table {
            assert_eq!(kind.status(), status);
            assert_eq!(kind.error_type(), ty);
        }
    }

    #[test]
    fn body_shape() {
        let e = OpenAiError::new(ErrorKind::ModelNotFound, "The model `x` does not exist")
            .with_code("model_not_found")
            .with_param("model");
        let v: Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "The model `x` does not exist",
                             "type": "invalid_request_error", "param": "model",
                             "code": "model_not_found"}})
        );
        let plain: Value =
            serde_json::from_str(&OpenAiError::new(ErrorKind::Unavailable, "down").body()).unwrap();
        assert_eq!(plain["error"]["param"], Value::Null);
        assert_eq!(plain["error"]["code"], Value::Null);
    }

    #[test]
    fn anthropic_shape() {
        use crate::api::Family;
        let e = OpenAiError::new(ErrorKind::RateLimited, "slow down").with_code("x");
        let v: Value = serde_json::from_str(&e.body_for(Family::Anthropic)).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
        assert_eq!(e.body_for(Family::OpenAi), e.body());
    }

    #[test]
    fn message_is_escaped() {
        let nasty = "quote \" backslash \\ newline \n tab \t nul \u{0} emoji 🦀 </script>";
        let body = OpenAiError::new(ErrorKind::InvalidRequest, nasty).body();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["message"], nasty);
        assert!(!body.contains('\n'));
    }
}
