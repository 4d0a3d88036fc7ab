//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! Counters and histograms are kept here as requests finish; gauges (queue depth, running
//! requests, KV use) are read from each model's engine when scraped. Endpoints are labelled by
//! their route (`/v1/chat/completions`), never the raw path, so a scan of random URLs cannot grow
//! the label set.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use exo_engine::{EngineLoad, Finished};

use crate::AppState;

/// Upper bounds of the time-to-first-token buckets, in seconds.
const TTFT_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds of the per-request generation speed buckets, in tokens per second.
const SPEED_BUCKETS: [f64; 10] = [1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0];

/// A per-model counter: name, help text, and where its value is kept.
type Counter = (&'static str, &'static str, fn(&ModelCounts) -> u64);
/// A per-model histogram: name, help text, bucket bounds, and where it is kept.
type HistogramSeries = (&'static str, &'static str, &'static [f64], fn(&ModelCounts) -> &Histogram);
/// A per-model gauge read from the engine: name, help text, and which load figure.
type Gauge = (&'static str, &'static str, fn(&EngineLoad) -> f64);
type LoadCounter = (&'static str, &'static str, fn(&EngineLoad) -> u64);

/// Everything counted since the server started.
#[derive(Default)]
pub(crate) struct Metrics {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    requests: BTreeMap<(String, u16), u64>,
    models: BTreeMap<String, ModelCounts>,
}

#[derive(Default)]
struct ModelCounts {
    prompt_tokens: u64,
    generated_tokens: u64,
    embedding_requests: u64,
    embedding_inputs: u64,
    embedding_tokens: u64,
    spec_drafted: u64,
    spec_accepted: u64,
    spec_steps: u64,
    ttft: Histogram,
    speed: Histogram,
}

#[derive(Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last is +Inf.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        self.buckets.resize(bounds.len() + 1, 0);
        let i = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, model: &str, bounds: &[f64]) {
        let mut cumulative = 0;
        for (i, b) in bounds.iter().enumerate() {
            cumulative += self.buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{model=\"{model}\",le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{model=\"{model}\",le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{model=\"{model}\"}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{model=\"{model}\"}} {}", self.count);
    }
}

impl Metrics {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counters stay meaningful even if a holder panicked mid-update.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_request(&self, endpoint: &str, status: u16) {
        *self.counts().requests.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    /// Records a finished generation of `model`.
    pub(crate) fn record_generation(&self, model: &str, f: &Finished) {
        let mut c = self.counts();
        let m = c.models.entry(model.to_string()).or_default();
        m.prompt_tokens += f.usage.prompt_tokens as u64;
        m.generated_tokens += f.usage.completion_tokens as u64;
        if let Some(s) = f.speculation {
            m.spec_drafted += s.drafted as u64;
            m.spec_accepted += s.accepted as u64;
            m.spec_steps += s.steps as u64;
        }
        if f.usage.completion_tokens > 0 {
            m.ttft.observe(&TTFT_BUCKETS, (f.timings.queued + f.timings.first_token).as_secs_f64());
        }
        // Speed over the tokens after the first, whose time is the prompt's.
        let secs = f.timings.generation.as_secs_f64();
        if f.usage.completion_tokens > 1 && secs > 0.0 {
            m.speed.observe(&SPEED_BUCKETS, (f.usage.completion_tokens - 1) as f64 / secs);
        }
    }

    /// Records an answered embedding request of `model`: `inputs` texts of `tokens` tokens in all.
    pub(crate) fn record_embedding(&self, model: &str, inputs: usize, tokens: usize) {
        let mut c = self.counts();
        let m = c.models.entry(model.to_string()).or_default();
        m.embedding_requests += 1;
        m.embedding_inputs += inputs as u64;
        m.embedding_tokens += tokens as u64;
    }

    /// The exposition text; `engines` gives each served model's current load.
    pub(crate) fn render(&self, engines: &[(String, EngineLoad)]) -> String {
        let c = self.counts();
        let mut out = String::new();
        header(&mut out, "exo_requests_total", "counter", "HTTP requests answered, by endpoint and status.");
        for ((endpoint, status), n) in &c.requests {
            let _ = writeln!(out, "exo_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        let counters: [Counter; 8] = [
            ("exo_prompt_tokens_total", "Prompt tokens of finished requests.", |m| m.prompt_tokens),
            ("exo_generated_tokens_total", "Tokens generated by finished requests.", |m| m.generated_tokens),
            ("exo_embedding_requests_total", "Embedding requests answered.", |m| m.embedding_requests),
            ("exo_embedding_inputs_total", "Texts embedded.", |m| m.embedding_inputs),
            ("exo_embedding_tokens_total", "Tokens of the texts embedded, after truncation.", |m| m.embedding_tokens),
            ("exo_spec_drafted_tokens_total", "Tokens proposed by speculative decoding's drafter, in finished requests.", |m| m.spec_drafted),
            ("exo_spec_accepted_tokens_total", "Drafted tokens the model accepted, in finished requests.", |m| m.spec_accepted),
            ("exo_spec_steps_total", "Forward passes that verified drafts, in finished requests.", |m| m.spec_steps),
        ];
        for (name, help, get) in counters {
            header(&mut out, name, "counter", help);
            for (model, m) in &c.models {
                let _ = writeln!(out, "{name}{{model=\"{model}\"}} {}", get(m));
            }
        }
        let histograms: [HistogramSeries; 2] = [
            (
                "exo_time_to_first_token_seconds",
                "Time from submission (queueing included) to the first generated token.",
                &TTFT_BUCKETS,
                |m| &m.ttft,
            ),
            (
                "exo_generation_tokens_per_second",
                "Generation speed of each request after its first token.",
                &SPEED_BUCKETS,
                |m| &m.speed,
            ),
        ];
        for (name, help, bounds, get) in histograms {
            header(&mut out, name, "histogram", help);
            for (model, m) in &c.models {
                get(m).render(&mut out, name, model, bounds);
            }
        }
        let gauges: [Gauge; 9] = [
            ("exo_queue_depth", "Requests waiting to start.", |l| l.queued as f64),
            ("exo_requests_running", "Requests generating (or embedding) now.", |l| l.running as f64),
            ("exo_kv_tokens_running", "Tokens in the KV cache held by running requests.", |l| l.kv_tokens_running as f64),
            ("exo_kv_tokens_cached", "Tokens in KV blocks nobody holds, kept for prefix reuse.", |l| l.kv_tokens_cached as f64),
            ("exo_kv_tokens_capacity", "KV cache capacity in tokens.", |l| l.kv_capacity as f64),
            ("exo_kv_bytes_per_token", "Bytes of KV cache per token (all layers, keys and values).", |l| l.kv_bytes_per_token as f64),
            ("exo_kv_blocks_free", "KV blocks that can be allocated now (free, or cached and unused).", |l| l.kv_blocks_free as f64),
            ("exo_kv_blocks_total", "KV blocks in the cache.", |l| l.kv_blocks_total as f64),
            (
                "exo_prefix_cache_hit_ratio",
                "Share of prompt tokens (whole blocks looked up) whose KV came from the prefix cache.",
                |l| if l.prefix_lookup_tokens == 0 { 0.0 } else { l.prefix_hit_tokens as f64 / l.prefix_lookup_tokens as f64 },
            ),
        ];
        for (name, help, get) in gauges {
            header(&mut out, name, "gauge", help);
            for (model, load) in engines {
                let _ = writeln!(out, "{name}{{model=\"{model}\"}} {}", get(load));
            }
        }
        let counters: [LoadCounter; 5] = [
            ("exo_prefix_cache_lookup_tokens_total", "Prompt tokens looked up in the prefix cache.", |l| l.prefix_lookup_tokens),
            ("exo_prefix_cache_hit_tokens_total", "Prompt tokens reused from the prefix cache.", |l| l.prefix_hit_tokens),
            ("exo_preemptions_total", "Times a running request gave up its KV blocks and was recomputed later.", |l| l.preemptions),
            ("exo_spec_gate_speculative_steps_total", "Decode steps the speculation gate ran speculatively.", |l| l.spec_steps),
            ("exo_spec_gate_plain_steps_total", "Decode steps the speculation gate ran plainly, speculation having measured slower at their batch size.", |l| l.spec_plain_steps),
        ];
        for (name, help, get) in counters {
            header(&mut out, name, "counter", help);
            for (model, load) in engines {
                let _ = writeln!(out, "{name}{{model=\"{model}\"}} {}", get(load));
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, ty: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
}

/// Middleware: counts every answered request by route and status.
pub(crate) async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_string();
    let res = next.run(req).await;
    state.metrics.record_request(&endpoint, res.status().as_u16());
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        for v in [0.005, 0.2, 0.2, 100.0] {
            h.observe(&TTFT_BUCKETS, v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "m", &TTFT_BUCKETS);
        assert!(out.contains("x_bucket{model=\"m\",le=\"0.01\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{model=\"m\",le=\"0.25\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{model=\"m\",le=\"30\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{model=\"m\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{model=\"m\"} 4\n"), "{out}");
    }
}
