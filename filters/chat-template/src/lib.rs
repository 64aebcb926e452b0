//! A model's own chat template, rendered as the engines render it, so the prompt a request
//! becomes (role markers, BOS, the default system prompt, tool definitions) can be counted
//! before the request leaves.
//!
//! * [`ChatTemplate`]: a Hugging Face chat template (Jinja2) compiled once, rendered with the
//!   variables llama.cpp's server and transformers pass (`messages`, `tools`,
//!   `add_generation_prompt`, `bos_token`, `eos_token`, `date_string`, `strftime_now`,
//!   `raise_exception`, the request's `chat_template_kwargs`), with Jinja2's
//!   `trim_blocks` / `lstrip_blocks` and Python's string methods and `tojson`.
//! * [`messages`]: the chat messages an OpenAI chat body or an Anthropic Messages body
//!   becomes before rendering, as llama.cpp's server builds them.
//! * [`builtin`]: the real templates of the families Sluice tokenizes, from llama.cpp's tree
//!   (embedded at build time).

pub mod messages;

use minijinja::value::{Kwargs, Value as J};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value;

mod builtins {
    include!(concat!(env!("OUT_DIR"), "/builtin_templates.rs"));
}

/// Why a template cannot be used or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the chat template does not compile: {0}")]
    Compile(String),
    #[error("the chat template cannot render this request: {0}")]
    Render(String),
}

const NAME: &str = "chat_template";

/// A compiled chat template and the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// The template reads tool-call arguments as an object, so a JSON-string argument is
    /// parsed first, as llama.cpp does for such templates (found by a probe).
    object_arguments: bool,
    /// How the template reads `content` (found by rendering probes, as llama.cpp finds
    /// its capabilities): a template that reads only strings gets text parts joined with
    /// newlines; one that reads only parts gets a string as one text part.
    string_content: bool,
    typed_content: bool,
    engine: Engine,
    /// The template is Gemma 4's (llama.cpp detects it by its tool-call marker).
    gemma4_calls: bool,
}

/// Which engine's rendering to reproduce: the engines differ around the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// llama.cpp's server: `date_string` today, `enable_thinking` true, its fix-ups for
    /// some families. Checked against llama-server in the tests.
    #[default]
    LlamaCpp,
    /// transformers' `apply_chat_template`, which vLLM, SGLang and TGI call: only the
    /// request's variables.
    Transformers,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

/// What a request renders with.
#[derive(Debug, Default)]
pub struct ChatInput<'a> {
    pub messages: Vec<Value>,
    pub tools: Option<&'a Value>,
    /// The operator's `chat_template_kwargs` for this model (over the defaults below).
    pub defaults: Option<&'a Value>,
    /// The request's `chat_template_kwargs` (vLLM and llama.cpp accept them; over all).
    pub kwargs: Option<&'a Value>,
    /// Now, in seconds since the epoch (`date_string`, `strftime_now`).
    pub now_unix_secs: u64,
}

impl ChatTemplate {
    /// Compile `source`; `bos` / `eos` are the model's special tokens' text.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // As transformers' `apply_chat_template` (and llama.cpp, which follows it).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        let mut t = Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            object_arguments: false,
            string_content: true,
            typed_content: false,
            engine: Engine::LlamaCpp,
            gemma4_calls: source.contains("'<|tool_call>call:'"),
        };
        // Tool-call arguments: llama.cpp parses them into an object for a template that
        // reads a field of an object argument. Probe: a call whose argument's value shows.
        let tools = serde_json::json!([{"type": "function", "function": {"name": "sluice_probe",
            "description": "", "parameters": {"type": "object", "properties": {"sluice_arg": {"type": "string"}}}}}]);
        let call = ChatInput {
            messages: vec![
                serde_json::json!({"role": "user", "content": "x"}),
                serde_json::json!({"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                    "function": {"name": "sluice_probe", "arguments": {"sluice_arg": "sluice-probe-value"}},
                    "id": "call_1"}]}),
                serde_json::json!({"role": "tool", "tool_call_id": "call_1", "content": "ok"}),
            ],
            tools: Some(&tools),
            ..ChatInput::default()
        };
        t.object_arguments = t
            .render_as_is(call)
            .is_ok_and(|out| out.contains("sluice-probe-value"));
        const MARK: &str = "sluice-probe-7f3a";
        let shows = |t: &Self, content: Value| {
            let input = ChatInput {
                messages: vec![serde_json::json!({"role": "user", "content": content})],
                ..ChatInput::default()
            };
            // The text must appear as itself, not inside a printed list.
            t.render_as_is(input).is_ok_and(|out| {
                out.contains(MARK) && !out.contains("'text'") && !out.contains("\"text\"")
            })
        };
        let string = shows(&t, Value::String(MARK.into()));
        let typed = shows(&t, serde_json::json!([{"type": "text", "text": MARK}]));
        t.string_content = string || !typed;
        t.typed_content = typed;
        Ok(t)
    }

    /// The prompt text of a request (`add_generation_prompt`: the reply's header included).
    pub fn render(&self, input: &ChatInput<'_>) -> Result<String, TemplateError> {
        let mut messages = input.messages.clone();
        if self.object_arguments {
            messages::parse_tool_arguments(&mut messages);
        }
        for m in &mut messages {
            let Some(content) = m.get_mut("content") else {
                continue;
            };
            match content {
                Value::Array(parts) if !self.typed_content => {
                    *content = Value::String(messages::joined_text(parts));
                }
                Value::String(s) if !self.string_content => {
                    *content = serde_json::json!([{"type": "text", "text": s}]);
                }
                _ => {}
            }
        }
        self.render_as_is(ChatInput { messages, ..*input })
    }

    /// Render with the messages exactly as given (taken, not copied: this runs per request).
    fn render_as_is(&self, input: ChatInput<'_>) -> Result<String, TemplateError> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        let messages = input.messages;
        let mut ctx = serde_json::Map::new();
        ctx.insert("messages".into(), Value::Array(messages));
        if let Some(tools) = input
            .tools
            .filter(|t| t.as_array().is_some_and(|a| !a.is_empty()))
        {
            ctx.insert("tools".into(), tools.clone());
        }
        ctx.insert("add_generation_prompt".into(), Value::Bool(true));
        ctx.insert("bos_token".into(), Value::String(self.bos.clone()));
        ctx.insert("eos_token".into(), Value::String(self.eos.clone()));
        if self.engine == Engine::LlamaCpp {
            // llama.cpp's server sets today's date (transformers leaves it to the
            // template's default, "26 Jul 2024" in Llama 3.1's) and reasoning on
            // (transformers leaves it undefined, which thinking templates read as off).
            ctx.insert(
                "date_string".into(),
                Value::String(strftime(input.now_unix_secs, "%d %b %Y")),
            );
            ctx.insert("enable_thinking".into(), Value::Bool(true));
        }
        ctx.insert("__now".into(), Value::from(input.now_unix_secs));
        for kw in [input.defaults, input.kwargs].into_iter().flatten() {
            if let Value::Object(kw) = kw {
                for (k, v) in kw {
                    ctx.insert(k.clone(), v.clone());
                }
            }
        }
        let mut out = tmpl
            .render(J::from_serialize(&ctx))
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        // llama.cpp's Gemma 4 handler (common/parsers/gemma4.cpp): a prompt whose template
        // ends a turn without opening the model's (content + tool call, then the results)
        // gets the model's turn opened.
        if self.engine == Engine::LlamaCpp && self.gemma4_calls && out.ends_with("<turn|>\n") {
            out.push_str("<|turn>model\n");
        }
        Ok(out)
    }

    /// Render as `engine` does (llama.cpp's server unless told otherwise).
    pub fn for_engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }

    pub fn bos_token(&self) -> &str {
        &self.bos
    }
}

/// A built-in template by name (see [`BUILTIN_NAMES`]); `None` for an unknown name or one
/// whose file was not there at build time.
pub fn builtin(name: &str) -> Option<&'static str> {
    builtins::TEMPLATES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| *src)
}

/// The names of the built-in templates (those built in: see build.rs).
pub fn builtin_names() -> Vec<&'static str> {
    builtins::TEMPLATES.iter().map(|(n, _)| *n).collect()
}

fn raise_exception(message: String) -> Result<J, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(state: &minijinja::State<'_, '_>, format: String) -> Result<String, Error> {
    let now = state
        .lookup("__now")
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(0);
    Ok(strftime(now, &format))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// `strftime` for the fields chat templates use (UTC): `%d %b %B %m %Y %y %H %M %S %a %A %j
/// %%`; any other is kept as written.
pub fn strftime(unix_secs: u64, format: &str) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name = MONTHS
        .get((month - 1).clamp(0, 11) as usize)
        .copied()
        .unwrap_or("");
    let weekday = DAYS.get((days % 7) as usize).copied().unwrap_or("");
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM
        .get((month - 1).clamp(0, 11) as usize)
        .copied()
        .unwrap_or(0)
        + day
        + i64::from(is_leap && month > 2);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('b') => out.push_str(month_name.get(..3).unwrap_or("")),
            Some('B') => out.push_str(month_name),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('a') => out.push_str(weekday.get(..3).unwrap_or("")),
            Some('A') => out.push_str(weekday),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// `tojson` as Python's `json.dumps(ensure_ascii=False)` writes it, which is what both
/// transformers and llama.cpp produce: `", "` / `": "` separators (`","` with an indent),
/// keys in their order, no HTML escaping. minijinja's own `tojson` escapes `<>&'` for HTML,
/// which would change the count.
fn tojson(value: J, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let v: Value = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let (item_sep, key_sep) = match &separators {
        Some(s) => (
            s.first().cloned().unwrap_or_else(|| ",".into()),
            s.get(1).cloned().unwrap_or_else(|| ": ".into()),
        ),
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let mut out = String::new();
    write_json(&mut out, &v, indent, 0, &item_sep, &key_sep);
    Ok(out)
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    level: usize,
    item_sep: &str,
    key_sep: &str,
) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_json_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_json(out, item, indent, level + 1, item_sep, key_sep);
            }
            if !items.is_empty() {
                newline(out, level);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_json_string(out, k);
                out.push_str(key_sep);
                write_json(out, item, indent, level + 1, item_sep, key_sep);
            }
            if !map.is_empty() {
                newline(out, level);
            }
            out.push('}');
        }
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn dates() {
        // 2026-12-01 00:00:00 UTC, a Tuesday.
        let t = 1_796_083_200;
        assert_eq!(strftime(t, "%d %b %Y"), "01 Dec 2026");
        assert_eq!(
            strftime(t + 3_723, "%A %B %-d %H:%M:%S %j %y %%"),
            "Tuesday December %-d 01:02:03 335 26 %"
        );
        assert_eq!(strftime(951_782_400, "%Y-%m-%d"), "2000-02-29");
    }

    #[test]
    fn tojson_is_pythons() {
        let t = ChatTemplate::new(
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'a<b>&\\'' | tojson }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let input = ChatInput {
            messages: vec![],
            kwargs: Some(&json!({"x": {"b": [1, "é"], "a": null}})),
            ..ChatInput::default()
        };
        assert_eq!(
            t.render(&input).unwrap(),
            "{\"b\": [1, \"é\"], \"a\": null}|{\n  \"b\": [\n    1,\n    \"é\"\n  ],\n  \"a\": null\n}|\"a<b>&'\""
        );
    }

    #[test]
    fn variables_defaults_then_operator_then_request() {
        let t =
            ChatTemplate::new("{{ enable_thinking }} {{ x }} {{ date_string }}", "", "").unwrap();
        let mut input = ChatInput {
            now_unix_secs: 1_796_083_200,
            ..ChatInput::default()
        };
        assert_eq!(t.render(&input).unwrap(), "True  01 Dec 2026");
        let operator = json!({"enable_thinking": false, "x": 1});
        input.defaults = Some(&operator);
        assert_eq!(t.render(&input).unwrap(), "False 1 01 Dec 2026");
        let request = json!({"x": 2, "date_string": "today"});
        input.kwargs = Some(&request);
        assert_eq!(t.render(&input).unwrap(), "False 2 today");
        // transformers passes neither.
        let t = ChatTemplate::new(
            "{{ enable_thinking is defined }} {{ date_string is defined }}",
            "",
            "",
        )
        .unwrap()
        .for_engine(Engine::Transformers);
        assert_eq!(t.render(&ChatInput::default()).unwrap(), "False False");
    }

    #[test]
    fn python_methods_and_errors() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m.content.strip() }}{% if m.content.startswith(' h') %}!{% endif %}{% endfor %}{% if messages | length > 1 %}{{ raise_exception('one only') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let one = ChatInput {
            messages: vec![json!({"role": "user", "content": " hi "})],
            ..ChatInput::default()
        };
        assert_eq!(t.render(&one).unwrap(), "hi!");
        let two = ChatInput {
            messages: vec![
                json!({"role": "user", "content": "a"}),
                json!({"role": "user", "content": "b"}),
            ],
            ..ChatInput::default()
        };
        assert!(matches!(t.render(&two), Err(TemplateError::Render(m)) if m.contains("one only")));
        assert!(matches!(
            ChatTemplate::new("{% if %}", "", ""),
            Err(TemplateError::Compile(_))
        ));
    }
}
