//! A batched forward pass over several sequences in one paged KV cache gives each sequence the
//! logits it gets alone.

use exo_models::{KvType, Logits, Segment, BLOCK_TOKENS};

/// Greedy token of a logits row.
fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().fold((0, f32::MIN), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32
}

#[test]
fn batched_sequences_match_solo_runs() {
    exo_kernels::threads::set_threads(2).unwrap();
    let path = exo_models::models_dir().join("qwen2.5-coder-0.5b-instruct.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh all", path.display());
    let m = exo_models::load(&path, &exo_models::LoadOptions::default()).unwrap();
    let tf = &m.transformer;
    let prompts: Vec<Vec<u32>> = ["def fibonacci(n):", "The capital of France is", "Once upon a time, in a land far away, there lived a"]
        .iter()
        .map(|p| m.tokenizer.encode(p, true, false).unwrap())
        .collect();
    let steps = 6;

    for kv_type in [KvType::F32, KvType::F16, KvType::Q8_0] {
        // Each prompt alone: its greedy continuation and the logits of every step.
        let solo: Vec<(Vec<u32>, Vec<Vec<f32>>)> = prompts
            .iter()
            .map(|p| {
                let mut st = tf.new_state_with(64, 64, kv_type).unwrap();
                tf.forward(&mut st, p, false).unwrap();
                let (mut toks, mut rows) = (vec![], vec![]);
                for _ in 0..steps {
                    rows.push(st.last_logits().to_vec());
                    let next = argmax(st.last_logits());
                    toks.push(next);
                    tf.forward(&mut st, &[next], false).unwrap();
                }
                (toks, rows)
            })
            .collect();

        // All together: the prompts in one batch, then one decode token each per step, in
        // blocks handed out interleaved (as a scheduler serving them at once would).
        let mut kv = tf.new_kv_cache(kv_type, 32).unwrap();
        let mut scratch = tf.new_scratch(64, 64).unwrap();
        let tables: Vec<Vec<u32>> = (0..3u32).map(|s| (0..4u32).map(|b| 3 * b + s + 5).collect()).collect();
        assert!(prompts.iter().all(|p| p.len() + steps <= 4 * BLOCK_TOKENS));
        let mut next: Vec<Vec<u32>> = prompts.clone();
        let mut pos = [0usize; 3];
        for step in 0..steps {
            let segs: Vec<Segment> = (0..3)
                .map(|s| Segment { tokens: &next[s], pos0: pos[s], blocks: &tables[s], logits: Logits::Last })
                .collect();
            tf.forward_batch(&mut kv, &mut scratch, &segs).unwrap();
            let mut fed = vec![];
            for s in 0..3 {
                let row = scratch.logits_row(s);
                let want = &solo[s].1[step];
                let err = row.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-3, "{}: sequence {s} step {step}: logits differ by {err}", kv_type.name());
                let tok = argmax(row);
                assert_eq!(tok, solo[s].0[step], "{}: sequence {s} step {step}", kv_type.name());
                pos[s] += next[s].len();
                fed.push(vec![tok]);
            }
            next = fed;
        }
    }
}
