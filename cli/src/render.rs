//! Rendering of the Envoy config templates in `envoy/` (minijinja / Jinja2 syntax).
//!
//! One template serves the local stack, the tests, the benchmark (with or without filters)
//! and docker-compose; only the variables differ. Undefined variables are errors, so a
//! template and its callers cannot drift apart silently.

use anyhow::{Context, Result};
use minijinja::{Environment, UndefinedBehavior, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Render `template` (the text) with `vars`. `file("rel/path")` in the template reads a
/// file relative to `base_dir` (the template's directory), e.g. a filter's JSON config.
pub fn render_str(
    name: &str,
    template: &str,
    vars: &BTreeMap<String, Value>,
    base_dir: &Path,
) -> Result<String> {
    let mut env = Environment::new();
    let base = base_dir.to_path_buf();
    env.add_function(
        "file",
        move |rel: String| -> Result<String, minijinja::Error> {
            std::fs::read_to_string(base.join(&rel)).map_err(|e| {
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("cannot read {rel}: {e}"),
                )
            })
        },
    );
    // `file("x.json") | fromjson`: a filter's JSON config as a value (to embed it in YAML).
    env.add_filter(
        "fromjson",
        |text: String| -> Result<Value, minijinja::Error> {
            serde_json::from_str::<serde_json::Value>(&text)
                .map(Value::from_serialize)
                .map_err(|e| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("not JSON: {e}"),
                    )
                })
        },
    );
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    // minijinja would JSON-escape every value in `.yaml`/`.json` templates; ours quote
    // explicitly (`tojson` where a value needs it).
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_template(name, template)
        .with_context(|| format!("template {name} does not parse"))?;
    let tmpl = env.get_template(name)?;
    tmpl.render(vars)
        .with_context(|| format!("cannot render {name}"))
}

/// Render a template file into `out`, written atomically (temp file, then rename) because
/// Envoy may be watching the target directory.
pub fn render_file(template: &Path, out: &Path, vars: &BTreeMap<String, Value>) -> Result<()> {
    let text = std::fs::read_to_string(template)
        .with_context(|| format!("cannot read {}", template.display()))?;
    let base = template.parent().unwrap_or(Path::new("."));
    let rendered = render_str(&template.display().to_string(), &text, vars, base)?;
    write_atomic(out, rendered.as_bytes())
}

/// Write a file so that readers see the old or the new content, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A dot-name, so a directory watcher matching the real name ignores the temp file.
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Parse `NAME=VALUE` pairs; a value that is valid JSON (numbers, booleans, lists) is
/// passed as such, anything else as a string.
pub fn parse_vars(pairs: &[String]) -> Result<BTreeMap<String, Value>> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("{p:?} is not NAME=VALUE"))?;
            let value = serde_json::from_str::<serde_json::Value>(v)
                .map(Value::from_serialize)
                .unwrap_or_else(|_| Value::from(v));
            Ok((k.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_refuses_undefined() {
        let vars =
            parse_vars(&["port=8080".into(), "filters=true".into(), "name=a b".into()]).unwrap();
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = render_str(
            "t",
            "port: {{ port }}\n{% if filters %}f: {{ name | tojson }}\n{% endif %}",
            &vars,
            here,
        )
        .unwrap();
        assert_eq!(out, "port: 8080\nf: \"a b\"\n");
        assert!(render_str("t", "{{ missing }}", &vars, here).is_err());
        let with_file = render_str("t", "{{ file('Cargo.toml') }}", &vars, here).unwrap();
        assert!(with_file.contains("name = \"sluice-cli\""), "{with_file}");
        assert!(render_str("t", "{{ file('nope') }}", &vars, here).is_err());
    }
}
