//! OpenAI request and response types, as far as the gateway and the mock backend need them.
//!
//! Request types keep unknown fields in `extra`, so a filter that rewrites a body (the model
//! name, `stream_options`) forwards everything else untouched.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::api::{api_for_path, default_api_paths, Api};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    /// `max_completion_tokens` supersedes the deprecated `max_tokens`.
    pub fn output_cap(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        StreamOptions::include_usage(&self.stream_options)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StreamOptions {
    /// Whether a request's (optional) `stream_options` ask for the usage chunk.
    pub fn include_usage(options: &Option<StreamOptions>) -> bool {
        options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `content` is a string, or an array of parts of which the `text` ones carry text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub part_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MessageContent {
    /// The text of the content, parts joined by newlines; non-text parts contribute nothing.
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Prompt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CompletionRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        StreamOptions::include_usage(&self.stream_options)
    }
}

/// `prompt` of the legacy completions API: a string or a list of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Many(Vec<String>),
}

impl Prompt {
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Many(v) => v.join("\n"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_request_keeps_unknown_fields() {
        let body = json!({
            "model": "m", "temperature": 0.2,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"},
                                             {"type": "image_url", "image_url": {"url": "x"}}],
                 "name": "bob"}
            ],
            "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 5
        });
        let req: ChatCompletionRequest = serde_json::from_value(body.clone()).unwrap();
        assert!(req.is_stream() && req.include_usage());
        assert_eq!(req.output_cap(), Some(5));
        assert_eq!(req.messages[1].content.as_ref().unwrap().text(), "hi");
        assert_eq!(serde_json::to_value(&req).unwrap(), body);
    }

    #[test]
    fn completion_prompt_forms() {
        let one: CompletionRequest =
            serde_json::from_value(json!({"model": "m", "prompt": "a"})).unwrap();
        let many: CompletionRequest =
            serde_json::from_value(json!({"model": "m", "prompt": ["a", "b"]})).unwrap();
        assert_eq!(one.prompt.unwrap().text(), "a");
        assert_eq!(many.prompt.unwrap().text(), "a\nb");
    }

    #[test]
    fn wrong_content_type_is_an_error_not_a_panic() {
        let bad = json!({"model": "m", "messages": [{"role": "user", "content": 42}]});
        assert!(serde_json::from_value::<ChatCompletionRequest>(bad).is_err());
    }
}
