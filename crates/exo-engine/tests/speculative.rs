//! Speculative decoding on the real models: a verification pass bitwise equal to single-token
//! passes, greedy output identical to plain decoding (the Qwen2.5-Coder 1.5B target with its
//! 0.5B sibling as draft, and prompt lookup), stop strings and penalties composing, sampled
//! output distributed as the target's own (SmolLM2), and mismatched pairs refused.

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use exo_engine::{Completion, Drafter, GenerateParams, Prompt, SamplerConfig, Session, SpecConfig, StopReason};
use exo_models::LoadedModel;
use exo_tokenizer::ChatMessage;

const CTX: usize = 1024;
const BATCH: usize = 64;

// Every test fixes the kernel pool at one thread: the tests run side by side on a small
// machine, and the pool's size can be set only once per process.

fn generate(model: &LoadedModel, session: &mut Session, ids: &[u32], params: &GenerateParams) -> Completion {
    let mut streamed = String::new();
    let done = session
        .generate(model, ids, params, |t, _| {
            streamed.push_str(t);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(streamed, done.text, "streamed text and the completion's text differ");
    done
}

fn chat(model: &LoadedModel, user: &str) -> Vec<u32> {
    Prompt::chat(&[ChatMessage { role: "user".into(), content: user.into() }]).tokenize(&model.tokenizer).unwrap()
}

/// Each prompt decoded plainly, then with each drafter: identical tokens, text and stop reason.
/// Returns the speculation counts summed over the prompts, per drafter.
fn same_as_plain(
    model: &LoadedModel,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    drafters: Vec<(&str, Drafter)>,
) -> Vec<(String, exo_engine::SpecStats)> {
    let mut plain = Session::new(model, CTX, BATCH).unwrap();
    let want: Vec<Completion> = prompts.iter().map(|p| generate(model, &mut plain, p, params)).collect();
    let mut totals = Vec::new();
    for (name, drafter) in drafters {
        let mut session = Session::new(model, CTX, BATCH).unwrap();
        session.set_drafter(Some(drafter));
        let mut total = exo_engine::SpecStats::default();
        for (p, w) in prompts.iter().zip(&want) {
            let got = generate(model, &mut session, p, params);
            assert_eq!(got.text, w.text, "{name}: text differs from plain decoding");
            assert_eq!(got.tokens, w.tokens, "{name}: tokens differ from plain decoding");
            assert_eq!(got.stop_reason, w.stop_reason, "{name}: stop reason differs");
            let s = got.speculation.expect("a speculative completion reports its counts");
            assert!(s.accepted <= s.drafted);
            total.drafted += s.drafted;
            total.accepted += s.accepted;
            total.steps += s.steps;
        }
        totals.push((name.to_string(), total));
    }
    totals
}

#[test]
fn qwen_coder_greedy_with_draft_model_or_prompt_lookup_equals_plain_decoding() {
    exo_kernels::threads::set_threads(1).unwrap();
    let target = common::model("qwen2.5-coder-1.5b-instruct");
    let draft = Arc::new(common::model("qwen2.5-coder-0.5b-instruct"));
    let prompts = vec![
        chat(&target, "Write a Python function that returns the n-th Fibonacci number iteratively."),
        chat(&target, "In two sentences, why is the sky blue?"),
        chat(
            &target,
            "Rename the variable `total` to `sum_of_values` in this code and show the whole result:\n\
             def add_all(values):\n    total = 0\n    for v in values:\n        total += v\n    return total\n",
        ),
        Prompt::Text("// C: swap two ints through pointers\nvoid swap(int *a, int *b) {".into()).tokenize(&target.tokenizer).unwrap(),
    ];
    let params = GenerateParams { max_tokens: 40, sampler: SamplerConfig::greedy(), ..Default::default() };
    // Every step speculates: with the gate, a busy machine can time speculation as the slower
    // way and decode plainly, leaving nothing drafted to check (the gated path's output is
    // checked in session_gate_decodes_plainly_when_the_draft_is_slower_than_the_target).
    let cfg = SpecConfig { gate: false, ..SpecConfig::default() };
    let drafters = vec![
        ("draft model", Drafter::model(&target, draft, CTX, BATCH, cfg).unwrap()),
        ("prompt lookup", Drafter::ngram(cfg).unwrap()),
    ];
    let totals = same_as_plain(&target, &prompts, &params, drafters);
    // Speculation really happened: the 0.5B draft agrees with its 1.5B sibling most of the
    // time, and the rename prompt gives prompt lookup whole lines to copy.
    for (name, s) in &totals {
        eprintln!("{name}: {s:?}, acceptance {:.2}", s.acceptance_rate());
        assert!(s.drafted > 0 && s.accepted > 0, "{name}: nothing accepted: {s:?}");
    }
    assert!(totals[0].1.acceptance_rate() > 0.4, "draft model acceptance {:?}", totals[0].1);
}

#[test]
fn smollm2_stop_strings_penalties_and_eos_compose_with_speculation() {
    exo_kernels::threads::set_threads(1).unwrap();
    let model = Arc::new(common::model("smollm2-135m-instruct"));
    let prompts = vec![
        chat(&model, "List the days of the week, one per line."),
        chat(&model, "What is the capital of France? Answer in one sentence."),
        Prompt::Text("one two three one two three one two".into()).tokenize(&model.tokenizer).unwrap(),
    ];
    // Every step speculates, so that stop strings and penalties meet drafts on any machine.
    let cfg = SpecConfig { draft_max: 6, draft_min: 2, gate: false };
    let cases = [
        // Penalties depend on every earlier token, drafts included.
        GenerateParams {
            max_tokens: 48,
            sampler: SamplerConfig { repeat_penalty: 1.3, frequency_penalty: 0.2, ..SamplerConfig::greedy() },
            ..Default::default()
        },
        // Stop strings cut inside an accepted run of drafts.
        GenerateParams { max_tokens: 48, sampler: SamplerConfig::greedy(), stop: vec!["day\n".into(), " one".into()], ..Default::default() },
        // max_tokens smaller than a draft.
        GenerateParams { max_tokens: 3, sampler: SamplerConfig::greedy(), ..Default::default() },
    ];
    for params in &cases {
        let drafters = vec![
            ("self draft", Drafter::model(&model, Arc::clone(&model), CTX, BATCH, cfg).unwrap()),
            ("prompt lookup", Drafter::ngram(cfg).unwrap()),
        ];
        let totals = same_as_plain(&model, &prompts, params, drafters);
        // The model drafting for itself agrees with itself.
        assert_eq!(totals[0].1.accepted, totals[0].1.drafted, "{totals:?}");
    }
    // The chat answer ends with an end-of-generation token under speculation too.
    let mut s = Session::new(&model, CTX, BATCH).unwrap();
    s.set_drafter(Some(Drafter::ngram(cfg).unwrap()));
    let params = GenerateParams { max_tokens: 64, sampler: SamplerConfig::greedy(), ..Default::default() };
    let spec = generate(&model, &mut s, &prompts[1], &params);
    assert_eq!(spec.stop_reason, StopReason::Eog);
    // A request with logprobs decodes plainly: no speculation counts, the same answer.
    let plain = generate(&model, &mut s, &prompts[1], &GenerateParams { logprobs: Some(0), ..params.clone() });
    assert!(plain.speculation.is_none() && spec.speculation.is_some());
    assert_eq!(plain.tokens, spec.tokens);
}

#[test]
fn smollm2_sampled_tokens_follow_the_target_distribution() {
    exo_kernels::threads::set_threads(1).unwrap();
    let model = Arc::new(common::model("smollm2-135m-instruct"));
    // A repetitive raw prompt, so prompt lookup finds a draft after most first tokens; the
    // second token is likely but not certain to be the draft (" 3" after "2, ").
    let prompt = Prompt::Text("1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2,".into()).tokenize(&model.tokenizer).unwrap();
    // Flat enough that the second token is genuinely uncertain; the repeat penalty makes the
    // distribution depend on the drafted history.
    let sampler = SamplerConfig { temperature: 1.5, top_k: 4, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.1, ..SamplerConfig::default() };
    let joint = common::token_distribution(&model, &prompt, &sampler, 2);
    // Every step speculates: the gate would soon decode the self-draft plainly (it costs what
    // the target does), leaving too few drafts to test.
    let cfg = SpecConfig { draft_max: 2, draft_min: 1, gate: false };
    let n = 600;
    for (name, drafter) in [
        ("prompt lookup", Drafter::ngram(cfg).unwrap()),
        ("self draft", Drafter::model(&model, Arc::clone(&model), CTX, BATCH, cfg).unwrap()),
    ] {
        let mut session = Session::new(&model, CTX, BATCH).unwrap();
        session.set_drafter(Some(drafter));
        let mut counts: HashMap<Vec<u32>, usize> = HashMap::new();
        let mut stats = exo_engine::SpecStats::default();
        for seed in 0..n {
            let params = GenerateParams {
                max_tokens: 3,
                ignore_eos: true,
                sampler: SamplerConfig { seed: Some(seed), ..sampler.clone() },
                ..Default::default()
            };
            let done = generate(&model, &mut session, &prompt, &params);
            let key = done.tokens[..2].to_vec();
            assert!(joint.contains_key(&key), "{name}: sampled {key:?}, which the target cannot produce");
            *counts.entry(key).or_default() += 1;
            let s = done.speculation.unwrap();
            stats.drafted += s.drafted;
            stats.accepted += s.accepted;
        }
        let (stat, df) = common::chi_square(&joint, &counts, n as usize);
        eprintln!("{name}: {stats:?}, chi-square {stat:.1} over {df} degrees of freedom");
        assert!(stats.drafted > n as usize / 2, "{name}: too few drafts to test anything: {stats:?}");
        assert!(stat < common::critical(df), "{name}: chi-square {stat:.1} over {df} degrees of freedom");
    }
}

/// A draft model slower than its target (the 1.5B drafting for its 0.5B sibling): the session's
/// gate measures speculation losing and decodes most steps plainly, with the same answer as
/// plain decoding; with the gate off (`--spec-always`) every step speculates.
#[test]
fn session_gate_decodes_plainly_when_the_draft_is_slower_than_the_target() {
    exo_kernels::threads::set_threads(1).unwrap();
    let target = common::model("qwen2.5-coder-0.5b-instruct");
    let draft = Arc::new(common::model("qwen2.5-coder-1.5b-instruct"));
    let prompt = chat(&target, "Write a Python function that checks whether a string is a palindrome.");
    let params = GenerateParams { max_tokens: 48, ignore_eos: true, sampler: SamplerConfig::greedy(), ..Default::default() };
    let mut plain = Session::new(&target, CTX, BATCH).unwrap();
    let want = generate(&target, &mut plain, &prompt, &params);
    for gate in [true, false] {
        let cfg = SpecConfig { draft_max: 4, draft_min: 1, gate };
        let mut session = Session::new(&target, CTX, BATCH).unwrap();
        session.set_drafter(Some(Drafter::model(&target, Arc::clone(&draft), CTX, BATCH, cfg).unwrap()));
        let got = generate(&target, &mut session, &prompt, &params);
        assert_eq!(got.tokens, want.tokens, "gate {gate}: tokens differ from plain decoding");
        let [plain_steps, spec_steps] = session.spec_gate_steps();
        let stats = got.speculation.unwrap();
        eprintln!("gate {gate}: {plain_steps} plain and {spec_steps} speculative steps, {stats:?}");
        if gate {
            assert!(plain_steps > 2 * spec_steps, "gate on: {plain_steps} plain vs {spec_steps} speculative steps");
        } else {
            assert_eq!([plain_steps, spec_steps], [0, 0], "gate off: the session counted gate steps");
            assert!(stats.steps > 0 && stats.drafted >= stats.steps, "gate off: {stats:?}");
        }
    }
}

#[test]
fn mismatched_vocabularies_are_refused_naming_the_difference() {
    exo_kernels::threads::set_threads(1).unwrap();
    let smol = common::model("smollm2-135m-instruct");
    let gemma = Arc::new(common::model("gemma3-270m"));
    let err = Drafter::model(&smol, gemma, CTX, BATCH, SpecConfig::default()).err().expect("gemma cannot draft for smollm2").to_string();
    assert!(err.contains("gemma3-270m.gguf") && err.contains("smollm2-135m-instruct.gguf"), "{err}");
    assert!(err.contains("BOS differs"), "{err}");
    let smol_copy = Arc::new(common::model("smollm2-135m-instruct"));
    let err = Drafter::model(&smol, smol_copy, CTX, BATCH, SpecConfig { draft_max: 1, draft_min: 2, ..SpecConfig::default() }).err().unwrap().to_string();
    assert!(err.contains("--draft-min 2"), "{err}");
}

#[test]
fn verifying_tokens_in_one_pass_gives_bitwise_the_logits_of_one_pass_each() {
    // What makes greedy speculation exact rather than nearly so: the target's logits for the
    // drafted positions are the very numbers plain decoding computes, whatever the weight
    // types (Q4_1/Q8_0, Q4_K/Q5_0/Q6_K, Gemma's sliding-window layers).
    exo_kernels::threads::set_threads(1).unwrap();
    for name in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m"] {
        let m = common::model(name);
        let ids = m.tokenizer.encode("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):", true, true).unwrap();
        let mut state = m.transformer.new_state(CTX, BATCH).unwrap();
        let split = ids.len() - 6;
        m.transformer.forward(&mut state, &ids[..split], false).unwrap();
        let mut single = Vec::new();
        for &t in &ids[split..] {
            m.transformer.forward(&mut state, &[t], false).unwrap();
            single.extend_from_slice(state.last_logits());
        }
        state.truncate(split);
        m.transformer.forward(&mut state, &ids[split..], true).unwrap();
        assert_eq!(state.logits().len(), single.len(), "{name}");
        let differ = state.logits().iter().zip(&single).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{name}: {differ} logits differ between one pass of 6 tokens and 6 passes");
    }
}
