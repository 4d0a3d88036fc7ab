//! `exo bench --parallel B1,B2,...`: B sequences prefilled and decoded together, measured as
//! llama.cpp's `llama-batched-bench` measures them, so the two tables compare column by column.
//!
//! For each B: one paged KV cache holds B·(p + n) tokens, each sequence in its own blocks. The
//! prompt phase feeds B prompts of `p` random tokens through forward calls of at most `-b`
//! tokens, several sequences' segments sharing a call where they fit, only each prompt's last
//! token asking for logits (llama-batched-bench splits its flat batch of B·p tokens the same
//! way). The generation phase is `n` steps, each ONE forward call of B one-token segments
//! (random tokens, no sampling). `-b` bounds the prompt calls only: the scratch buffers are sized
//! for max(b, B) tokens so that a decode step is never split, which is what a server decoding B
//! requests does. Each B runs once to warm up, then `reps` times.
//!
//! Columns (llama-batched-bench's): PP and TG tokens per sequence, B sequences, N_KV = B·(p+n)
//! tokens in the cache, T_PP/T_TG/T seconds of each phase and both, S_PP = B·p / T_PP,
//! S_TG = B·n / T_TG and S = B·(p+n) / T tokens per second.

use std::time::Instant;

use anyhow::{bail, Context};
use exo_models::{Logits, Segment, BLOCK_TOKENS};
use rand::{Rng, SeedableRng};

use super::{mean_sd, BenchArgs};

/// Parses one entry of `--parallel`: a number of sequences, at least 1.
pub fn parse_sequences(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("0 sequences: each entry must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a number of sequences (expected a list such as 8,32)")),
    }
}

/// Refuses flag combinations the batched test cannot honour, before the model is loaded.
pub fn check_flags(a: &BenchArgs) -> anyhow::Result<()> {
    if a.n_prompt == 0 || a.n_gen == 0 {
        bail!("--parallel needs -p and -n of at least 1 (got -p {} -n {}): both phases are measured", a.n_prompt, a.n_gen);
    }
    if a.batch == 0 {
        bail!("-b must be at least 1 token per forward call");
    }
    if a.ctx_size.is_some() {
        bail!("--ctx-size does not apply with --parallel: the KV cache holds B·(p+n) tokens for each B; set -p and -n instead");
    }
    Ok(())
}

/// The context the GPU keeps KV room for: every sequence of the largest B.
pub fn kv_tokens(a: &BenchArgs) -> usize {
    a.parallel.iter().max().copied().unwrap_or(1).saturating_mul(a.n_prompt + a.n_gen)
}

/// The figures of one B, each a (mean, sample standard deviation) over the repetitions.
struct Row {
    b: usize,
    t_pp: (f64, f64),
    s_pp: (f64, f64),
    t_tg: (f64, f64),
    s_tg: (f64, f64),
    t: (f64, f64),
    s: (f64, f64),
}

/// Runs the batched test for every B in `a.parallel` on the loaded model and prints the table
/// (or JSON).
pub fn run(a: &BenchArgs, model: &exo_models::LoadedModel, threads: usize, load_s: f64) -> anyhow::Result<()> {
    let tf = &model.transformer;
    let (p, n) = (a.n_prompt, a.n_gen);
    let b_max = a.parallel.iter().copied().max().context("--parallel lists no sequence counts")?;
    let seq_blocks = (p + n).div_ceil(BLOCK_TOKENS);
    let n_blocks = b_max.checked_mul(seq_blocks).filter(|&nb| u32::try_from(nb).is_ok());
    let bytes_per_token = tf.new_kv_cache(a.kv_type, 0)?.bytes_per_token();
    let cache_bytes = n_blocks.and_then(|nb| (nb * BLOCK_TOKENS).checked_mul(bytes_per_token));
    // The cache lives where the model's layers run: on the GPU when it holds them.
    let device_free = tf.device_free_memory();
    let available = device_free.map(|b| b as u64).or_else(exo_engine::available_memory);
    let (Some(n_blocks), Some(cache_bytes)) = (n_blocks, cache_bytes) else {
        bail!("--parallel {b_max} with -p {p} -n {n}: a KV cache of {b_max}×{} tokens is beyond any memory", p + n);
    };
    if let Some(avail) = available.filter(|&m| cache_bytes as u64 > m) {
        bail!(
            "--parallel {b_max} with -p {p} -n {n} needs a KV cache of {b_max}×{} tokens = {} MiB ({} bytes per token, {}), more than the {} MiB of {} memory available; lower --parallel, -p or -n, or use --kv-type q8_0",
            p + n,
            cache_bytes >> 20,
            bytes_per_token,
            a.kv_type.name(),
            avail >> 20,
            if device_free.is_some() { "GPU" } else { "host" }
        );
    }
    let mut kv = tf.new_kv_cache(a.kv_type, n_blocks)?;
    let max_tokens = a.batch.min(b_max * p).max(b_max);
    let mut scratch = tf.new_scratch(max_tokens, p + n).with_context(|| format!("-p {p} + -n {n} tokens per sequence"))?;
    let vocab = tf.config().vocab_size as u32;
    let first = model.tokenizer.bos_id().filter(|_| model.tokenizer.adds_bos());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);

    let mut rows = Vec::new();
    for &b in &a.parallel {
        let tables: Vec<Vec<u32>> = (0..b).map(|s| ((s * seq_blocks) as u32..((s + 1) * seq_blocks) as u32).collect()).collect();
        let (mut t_pp, mut t_tg) = (Vec::new(), Vec::new());
        for rep in 0..=a.reps {
            let prompts: Vec<Vec<u32>> = (0..b)
                .map(|_| {
                    let mut t: Vec<u32> = (0..p).map(|_| rng.random_range(0..vocab)).collect();
                    if let Some(bos) = first {
                        t[0] = bos;
                    }
                    t
                })
                .collect();
            let start = Instant::now();
            prefill(tf, &mut kv, &mut scratch, &prompts, &tables, a.batch)?;
            let pp_s = start.elapsed().as_secs_f64();
            let start = Instant::now();
            for step in 0..n {
                let fed: Vec<u32> = (0..b).map(|_| rng.random_range(0..vocab)).collect();
                let segs: Vec<Segment> = (0..b)
                    .map(|s| Segment { tokens: &fed[s..s + 1], pos0: p + step, blocks: &tables[s], logits: Logits::Last })
                    .collect();
                tf.forward_batch(&mut kv, &mut scratch, &segs)?;
            }
            let tg_s = start.elapsed().as_secs_f64();
            if rep > 0 {
                t_pp.push(pp_s);
                t_tg.push(tg_s);
            }
        }
        let t: Vec<f64> = t_pp.iter().zip(&t_tg).map(|(x, y)| x + y).collect();
        let rate = |tokens: usize, ts: &[f64]| mean_sd(&ts.iter().map(|t| tokens as f64 / t).collect::<Vec<_>>());
        rows.push(Row {
            b,
            t_pp: mean_sd(&t_pp),
            s_pp: rate(b * p, &t_pp),
            t_tg: mean_sd(&t_tg),
            s_tg: rate(b * n, &t_tg),
            t: mean_sd(&t),
            s: rate(b * (p + n), &t),
        });
    }
    print(a, model, threads, load_s, &rows);
    Ok(())
}

/// Feeds every prompt into its sequence's blocks from position 0, in forward calls of at most
/// `batch` tokens filled in sequence order; each prompt's last token asks for logits.
fn prefill(
    tf: &exo_models::Transformer,
    kv: &mut exo_models::KvCache,
    scratch: &mut exo_models::Scratch,
    prompts: &[Vec<u32>],
    tables: &[Vec<u32>],
    batch: usize,
) -> anyhow::Result<()> {
    let (mut seq, mut done) = (0, 0);
    while seq < prompts.len() {
        let mut segs = Vec::new();
        let mut room = batch;
        while room > 0 && seq < prompts.len() {
            let prompt = &prompts[seq];
            let take = room.min(prompt.len() - done);
            let ends = done + take == prompt.len();
            let logits = if ends { Logits::Last } else { Logits::None };
            segs.push(Segment { tokens: &prompt[done..done + take], pos0: done, blocks: &tables[seq], logits });
            room -= take;
            if ends {
                (seq, done) = (seq + 1, 0);
            } else {
                done += take;
            }
        }
        tf.forward_batch(kv, scratch, &segs)?;
    }
    Ok(())
}

fn print(a: &BenchArgs, model: &exo_models::LoadedModel, threads: usize, load_s: f64, rows: &[Row]) {
    let cfg = model.transformer.config();
    let (p, n) = (a.n_prompt, a.n_gen);
    if a.json {
        let pair = |name: &str, (m, sd): (f64, f64)| [(name.to_string(), serde_json::json!(m)), (format!("{name}_sd"), serde_json::json!(sd))];
        let results: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut o = serde_json::Map::new();
                o.insert("pp".into(), p.into());
                o.insert("tg".into(), n.into());
                o.insert("b".into(), r.b.into());
                o.insert("n_kv".into(), (r.b * (p + n)).into());
                for (name, v) in [("t_pp", r.t_pp), ("s_pp", r.s_pp), ("t_tg", r.t_tg), ("s_tg", r.s_tg), ("t", r.t), ("s", r.s)] {
                    o.extend(pair(name, v));
                }
                serde_json::Value::Object(o)
            })
            .collect();
        let fields = serde_json::json!({
            "kv_type": a.kv_type.name(),
            "n_prompt": p,
            "n_gen": n,
            "batch": a.batch,
            "reps": a.reps,
            "parallel": results,
        });
        println!("{}", super::json_result(model, threads, load_s, fields));
        return;
    }
    println!(
        "{} {}: device {}, {threads} threads, KV {}, -b {}, {} reps (mean ± sd)\n",
        cfg.arch.name(),
        model.info.name,
        model.transformer.device(),
        a.kv_type.name(),
        a.batch,
        a.reps
    );
    println!("| PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {p} | {n} | {} | {} | {:.3} | {:.2} ± {:.2} | {:.3} | {:.2} ± {:.2} | {:.3} | {:.2} ± {:.2} |",
            r.b,
            r.b * (p + n),
            r.t_pp.0,
            r.s_pp.0,
            r.s_pp.1,
            r.t_tg.0,
            r.s_tg.0,
            r.s_tg.1,
            r.t.0,
            r.s.0,
            r.s.1
        );
    }
}
