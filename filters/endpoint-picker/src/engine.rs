//! What each inference engine tells about its load, under its own names.
//!
//! Every engine reports, on its own metrics endpoint, how many requests wait in its queue,
//! how many run, and how full its KV cache is. The names differ by engine and by version
//! (vLLM renamed `gpu_cache_usage_perc` to `kv_cache_usage_perc`; routers that knew one name
//! broke on the other), so each engine lists every name it has used, newest first.

use serde::{Deserialize, Serialize};

/// The engine serving a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Vllm,
    Sglang,
    Tgi,
    /// trtllm-serve (JSON iteration stats) or Triton with the TensorRT-LLM backend.
    Trtllm,
    /// llama.cpp's `llama-server` (metrics need its `--metrics` flag).
    Llamacpp,
    /// Any OpenAI-compatible server: no load metrics; the gateway's own counts only.
    #[default]
    Openai,
}

/// An engine's load as last read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineLoad {
    /// Requests queued in the engine, not yet running.
    pub waiting: f64,
    /// Requests running (in the batch).
    pub running: f64,
    /// KV-cache utilisation, 0 to 1, when the engine reports it.
    pub kv_cache: Option<f64>,
    /// LoRA adapters loaded and ready.
    #[serde(default)]
    pub loras: Vec<String>,
}

/// Names of one quantity, newest first; a sample may need a label (`request_type="waiting"`).
struct Names {
    waiting: &'static [(&'static str, Option<(&'static str, &'static str)>)],
    running: &'static [(&'static str, Option<(&'static str, &'static str)>)],
    kv_cache: &'static [(&'static str, Option<(&'static str, &'static str)>)],
}

const VLLM: Names = Names {
    waiting: &[("vllm:num_requests_waiting", None)],
    running: &[("vllm:num_requests_running", None)],
    // vLLM ≥ 0.10 (V1), then the older name.
    kv_cache: &[
        ("vllm:kv_cache_usage_perc", None),
        ("vllm:gpu_cache_usage_perc", None),
    ],
};

const SGLANG: Names = Names {
    waiting: &[("sglang:num_queue_reqs", None)],
    running: &[("sglang:num_running_reqs", None)],
    kv_cache: &[("sglang:token_usage", None)],
};

const TGI: Names = Names {
    waiting: &[("tgi_queue_size", None)],
    running: &[("tgi_batch_current_size", None)],
    kv_cache: &[],
};

const TRITON_TRTLLM: Names = Names {
    waiting: &[(
        "nv_trt_llm_request_metrics",
        Some(("request_type", "waiting")),
    )],
    running: &[(
        "nv_trt_llm_request_metrics",
        Some(("request_type", "scheduled")),
    )],
    kv_cache: &[(
        "nv_trt_llm_kv_cache_block_metrics",
        Some(("kv_cache_block_type", "fraction")),
    )],
};

const LLAMACPP: Names = Names {
    waiting: &[("llamacpp:requests_deferred", None)],
    running: &[("llamacpp:requests_processing", None)],
    // Older servers only.
    kv_cache: &[("llamacpp:kv_cache_usage_ratio", None)],
};

impl Engine {
    /// The path an active health check asks.
    pub fn health_path(self) -> &'static str {
        match self {
            Self::Openai => "/v1/models",
            _ => "/health",
        }
    }

    /// Where the engine reports its load (`None`: it does not).
    pub fn metrics_path(self) -> Option<&'static str> {
        match self {
            Self::Openai => None,
            _ => Some("/metrics"),
        }
    }

    /// Read a metrics page. `None` when it holds none of the engine's names (a wrong engine
    /// in the config, or metrics switched off): the endpoint is then judged by the gateway's
    /// own counts.
    pub fn parse(self, page: &str) -> Option<EngineLoad> {
        let names = match self {
            Self::Vllm => VLLM,
            Self::Sglang => SGLANG,
            Self::Tgi => TGI,
            Self::Trtllm => {
                let trimmed = page.trim_start();
                if trimmed.starts_with('[') || trimmed.starts_with('{') {
                    return parse_trtllm_serve(trimmed);
                }
                TRITON_TRTLLM
            }
            Self::Llamacpp => LLAMACPP,
            Self::Openai => return None,
        };
        let samples = samples(page);
        let first = |list: &[(&str, Option<(&str, &str)>)]| {
            list.iter()
                .find_map(|(name, label)| sum(&samples, name, *label))
        };
        let waiting = first(names.waiting);
        let running = first(names.running);
        if waiting.is_none() && running.is_none() {
            return None;
        }
        let loras = if self == Self::Vllm {
            vllm_loras(&samples)
        } else {
            Vec::new()
        };
        Some(EngineLoad {
            waiting: waiting.unwrap_or(0.0),
            running: running.unwrap_or(0.0),
            kv_cache: first(names.kv_cache).map(|v| v.clamp(0.0, 1.0)),
            loras,
        })
    }
}

/// One sample of a Prometheus text page.
#[derive(Debug, Clone, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: f64,
}

/// The samples of a Prometheus text page (comments and unparsable lines skipped).
fn samples(page: &str) -> Vec<Sample<'_>> {
    page.lines().filter_map(sample).collect()
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            let name = line.get(..open)?;
            (
                name,
                labels(line.get(open + 1..close)?),
                line.get(close + 1..)?,
            )
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    value.is_finite().then_some(Sample {
        name: name.trim(),
        labels,
        value,
    })
}

/// `a="1",b="x,y"`: values may hold commas and escaped quotes.
fn labels(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest
            .get(..eq)
            .unwrap_or("")
            .trim()
            .trim_start_matches(',')
            .trim();
        let after = rest.get(eq + 1..).unwrap_or("").trim_start();
        let Some(body) = after.strip_prefix('"') else {
            break;
        };
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        out.push((key, body.get(..end).unwrap_or("")));
        rest = body.get(end + 1..).unwrap_or("");
    }
    out
}

/// The sum of a metric over its label sets (one per model served), filtered by a label.
fn sum(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let mut found = None;
    for s in samples.iter().filter(|s| s.name == name) {
        if let Some((k, v)) = label {
            if !s.labels.iter().any(|(sk, sv)| *sk == k && *sv == v) {
                continue;
            }
        }
        *found.get_or_insert(0.0) += s.value;
    }
    found
}

/// vLLM's `lora_requests_info`: the newest sample (its value is a timestamp) lists the
/// adapters loaded in `running_lora_adapters`.
fn vllm_loras(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .filter(|s| s.name == "vllm:lora_requests_info")
        .max_by(|a, b| a.value.total_cmp(&b.value))
        .and_then(|s| {
            s.labels
                .iter()
                .find(|(k, _)| *k == "running_lora_adapters")
                .map(|(_, v)| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_string)
                        .collect()
                })
        })
        .unwrap_or_default()
}

/// trtllm-serve's `/metrics`: a JSON array of iteration stats; the last one is the newest.
fn parse_trtllm_serve(page: &str) -> Option<EngineLoad> {
    let v: serde_json::Value = serde_json::from_str(page).ok()?;
    let stat = match &v {
        serde_json::Value::Array(a) => a.last()?,
        other => other,
    };
    let number = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_f64);
    let waiting = number(stat.get("numQueuedRequests"));
    let running = number(stat.get("numActiveRequests"));
    if waiting.is_none() && running.is_none() {
        return None;
    }
    let kv = stat.get("kvCacheStats").and_then(|k| {
        let max = number(k.get("maxNumBlocks")).filter(|m| *m > 0.0)?;
        let used = number(k.get("usedNumBlocks"))
            .or_else(|| number(k.get("freeNumBlocks")).map(|f| max - f))?;
        Some((used / max).clamp(0.0, 1.0))
    });
    Some(EngineLoad {
        waiting: waiting.unwrap_or(0.0),
        running: running.unwrap_or(0.0),
        kv_cache: kv,
        loras: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
