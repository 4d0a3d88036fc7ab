//! Speculative decoding inside the continuous-batching scheduler, on the real models: concurrent
//! greedy requests answer exactly as a plain engine answers them (text, token count, stop
//! reason), with SmolLM2 drafting for itself (every draft accepted), prompt lookup, and the
//! Qwen2.5-Coder 1.5B target with its 0.5B sibling; through preemption under a tiny KV pool and
//! prefix-cache reuse; requests with log-probabilities decode plainly and their blocks still
//! serve later speculating requests. Sampled requests follow the target's own distribution
//! (chi-square against the distribution computed from plain forward passes).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use exo_engine::{
    ContextPolicy, DraftSource, EngineConfig, EngineHandle, Event, Finished, GenerateParams, Prompt, Request, RequestStream, SamplerConfig,
    SpecConfig, SpecStats, Speculation, StopReason,
};
use exo_models::{KvType, LoadedModel, BLOCK_TOKENS};
use serde_json::json;

/// An engine over `model` whose target cache holds `kv_tokens` tokens (the draft's, as many).
fn engine(model: &Arc<LoadedModel>, parallel: usize, ctx: usize, kv_tokens: usize, spec: Option<Speculation>) -> EngineHandle {
    let bytes = |m: &LoadedModel| m.transformer.new_kv_cache(KvType::F16, 0).unwrap().bytes_per_token();
    let draft_bytes = match spec.as_ref().map(|s| &s.source) {
        Some(DraftSource::Model(d)) => bytes(d),
        _ => 0,
    };
    let config = EngineConfig {
        parallel,
        batch: 64,
        kv_memory: Some((kv_tokens * (bytes(model) + draft_bytes)) as u64),
        speculation: spec,
        queue: 1024,
        ..EngineConfig::new(ctx)
    };
    EngineHandle::start(model.clone(), config).unwrap()
}

fn with(source: DraftSource, cfg: SpecConfig) -> Option<Speculation> {
    Some(Speculation { source, config: cfg })
}

/// A stream read to its end: the text and how it finished.
fn collect(mut s: RequestStream) -> (String, Finished) {
    let mut text = String::new();
    while let Some(ev) = s.blocking_next() {
        match ev {
            Event::Started { .. } => {}
            Event::Chunk { text: t, .. } => text += &t,
            Event::Done(f) => return (text, f),
            Event::Error(e) => panic!("{e}"),
        }
    }
    panic!("stream ended without Done")
}

/// Runs all `requests` at once, each read on its own thread.
fn together(e: &EngineHandle, requests: &[Request]) -> Vec<(String, Finished)> {
    let streams: Vec<RequestStream> = requests.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    std::thread::scope(|sc| {
        let handles: Vec<_> = streams.into_iter().map(|s| sc.spawn(move || collect(s))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn chat(user: &str) -> Prompt {
    Prompt::Chat { messages: json!([{ "role": "user", "content": user }]), tools: None }
}

fn request(prompt: Prompt, max_tokens: usize, params: GenerateParams) -> Request {
    Request { max_tokens: Some(max_tokens), ..Request::new(prompt, params) }
}

/// Each answer of `got` equals the plain engine's in `want`; returns the speculation counts
/// summed over the requests that were speculated.
fn same_answers(name: &str, got: &[(String, Finished)], want: &[(String, Finished)]) -> SpecStats {
    let mut total = SpecStats::default();
    for (i, ((text, f), (want_text, w))) in got.iter().zip(want).enumerate() {
        assert_eq!(text, want_text, "{name}: request {i} says something else");
        assert_eq!(f.usage.completion_tokens, w.usage.completion_tokens, "{name}: request {i}");
        assert_eq!(f.reason, w.reason, "{name}: request {i}");
        if let Some(s) = f.speculation {
            assert!(s.accepted <= s.drafted, "{name}: {s:?}");
            total.drafted += s.drafted;
            total.accepted += s.accepted;
            total.steps += s.steps;
        }
    }
    total
}

/// Requests that end every way: EOS, stop strings inside a run of drafts, a `max_tokens`
/// smaller than a draft, penalties that depend on every earlier token, repetitive text that
/// prompt lookup can copy, and one with log-probabilities (decoded plainly).
fn smollm2_requests() -> Vec<Request> {
    let greedy = || GenerateParams { sampler: SamplerConfig::greedy(), ..Default::default() };
    let penalties = SamplerConfig { repeat_penalty: 1.3, frequency_penalty: 0.2, ..SamplerConfig::greedy() };
    vec![
        request(chat("What is the capital of France? Answer in one sentence."), 64, greedy()),
        request(chat("List the days of the week, one per line."), 48, GenerateParams { stop: vec!["day\n".into()], ..greedy() }),
        request(Prompt::Text("one two three one two three one two".into()), 40, greedy()),
        request(chat("Write a short poem about the sea."), 3, greedy()),
        request(chat("Tell me about bread."), 40, GenerateParams { sampler: penalties, ..greedy() }),
        request(chat("Count from one to twenty."), 30, GenerateParams { logprobs: Some(0), ..greedy() }),
        request(Prompt::Text("A B C D E F G A B C D E F G A B C".into()), 24, GenerateParams { ignore_eos: true, ..greedy() }),
    ]
}

#[test]
fn smollm2_batched_speculation_answers_as_plain_decoding() {
    exo_kernels::threads::set_threads(1).unwrap();
    let model = Arc::new(common::model("smollm2-135m-instruct"));
    let requests = smollm2_requests();
    let plain = engine(&model, 4, 512, 4 * 512, None);
    let want = together(&plain, &requests);
    assert!(want.iter().all(|(_, f)| f.speculation.is_none()));
    assert!(want.iter().any(|(_, f)| f.reason == StopReason::Eog), "no request ended with EOS: the case is not covered");

    let cfg = SpecConfig { draft_max: 6, draft_min: 2, ..SpecConfig::default() };
    let cases = [("self draft", DraftSource::Model(model.clone())), ("prompt lookup", DraftSource::Ngram)];
    for (name, source) in cases {
        let e = engine(&model, 4, 512, 4 * 512, with(source, cfg));
        // Twice: the second round finds the prompts in the prefix cache, for both models.
        for round in 0..2 {
            let got = together(&e, &requests);
            let total = same_answers(&format!("{name}, round {round}"), &got, &want);
            eprintln!("{name}, round {round}: {total:?}");
            assert!(got[5].1.speculation.is_none(), "{name}: a request with logprobs was speculated");
            assert!(got.iter().enumerate().all(|(i, (_, f))| i == 5 || f.speculation.is_some()));
            assert!(total.drafted > 0 && total.accepted > 0, "{name}: nothing accepted: {total:?}");
            if name == "self draft" {
                // The same model on the same cache rows agrees with itself.
                assert_eq!(total.accepted, total.drafted, "{name}");
            }
            if round == 1 {
                assert!(got[0].1.usage.cached_tokens > 0, "{name}: the prompt was not reused");
            }
        }
    }
}

#[test]
fn smollm2_sampled_requests_follow_the_target_distribution() {
    exo_kernels::threads::set_threads(1).unwrap();
    let model = Arc::new(common::model("smollm2-135m-instruct"));
    // A repetitive raw prompt, so prompt lookup finds a draft after most first tokens; the
    // speculated second and third tokens are likely but not certain to be the drafts.
    let text = "1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2,";
    let ids = Prompt::Text(text.into()).tokenize(&model.tokenizer).unwrap();
    // Flat enough that the drafts are often rejected; the repeat penalty makes the target's
    // distribution depend on the drafted history.
    let sampler = SamplerConfig { temperature: 1.5, top_k: 4, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.1, ..SamplerConfig::default() };
    // Answers are compared as text (the engine streams text); token sequences with the same
    // text are one cell.
    let mut want: HashMap<String, f64> = HashMap::new();
    for (tokens, p) in common::token_distribution(&model, &ids, &sampler, 3) {
        *want.entry(model.tokenizer.decode(&tokens, true)).or_default() += p;
    }
    let n = 600;
    // The gate stays out of it: every step speculates. The plain engine checks the reference.
    let cfg = SpecConfig { draft_max: 2, draft_min: 1, gate: false };
    let sources = [("plain", None), ("prompt lookup", Some(DraftSource::Ngram)), ("self draft", Some(DraftSource::Model(model.clone())))];
    for (name, source) in sources {
        let speculated = source.is_some();
        let e = engine(&model, 16, 64, 16 * 64, source.and_then(|s| with(s, cfg)));
        let streams: Vec<RequestStream> = (0..n)
            .map(|seed| {
                let params = GenerateParams { ignore_eos: true, sampler: SamplerConfig { seed: Some(seed), ..sampler.clone() }, ..Default::default() };
                e.submit(request(Prompt::Text(text.into()), 3, params)).unwrap()
            })
            .collect();
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut stats = SpecStats::default();
        for s in streams {
            let (answer, f) = collect(s);
            *counts.entry(answer).or_default() += 1;
            if let Some(sp) = f.speculation {
                stats.drafted += sp.drafted;
                stats.accepted += sp.accepted;
            }
        }
        // The batched passes round differently from the single-sequence passes of the
        // reference, which can reorder near-tied candidates at the top-k cut: rare answers
        // outside the reference's support are allowed (and counted in its rarest cell).
        let outside: usize = counts.iter().filter(|(a, _)| !want.contains_key(*a)).map(|(_, c)| c).sum();
        let (stat, df) = common::chi_square(&want, &counts, n as usize);
        eprintln!("{name}: {stats:?}, chi-square {stat:.1} over {df} degrees of freedom, {outside} answers outside the reference");
        assert!(outside <= n as usize / 100, "{name}: {outside} of {n} answers the target cannot produce");
        if speculated {
            assert!(stats.drafted > n as usize / 2, "{name}: too few drafts to test anything: {stats:?}");
        }
        if name == "prompt lookup" {
            assert!(stats.accepted < stats.drafted * 9 / 10, "{name}: too few rejections to test anything: {stats:?}");
        }
        assert!(stat < common::critical(df), "{name}: chi-square {stat:.1} over {df} degrees of freedom");
    }
}

#[test]
fn smollm2_blocks_of_plainly_decoded_requests_serve_later_requests_with_a_draft_model() {
    exo_kernels::threads::set_threads(1).unwrap();
    let model = Arc::new(common::model("smollm2-135m-instruct"));
    let greedy = GenerateParams { sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    let cfg = SpecConfig { draft_max: 6, draft_min: 1, gate: false };
    let e = engine(&model, 2, 512, 4 * 512, with(DraftSource::Model(model.clone()), cfg));
    // With log-probabilities the request decodes plainly: the draft model never sees its
    // answer, yet the answer's blocks join the prefix cache.
    let first = "Here is a list of twenty fruits, one per line:\n";
    let answer_tokens = 80;
    let a = together(&e, &[request(Prompt::Text(first.into()), answer_tokens, GenerateParams { logprobs: Some(0), ..greedy.clone() })]);
    let (answer, fa) = &a[0];
    assert!(fa.speculation.is_none());
    // The follow-up continues the first answer: its prompt is the first prompt and answer.
    let follow = request(Prompt::Text(format!("{first}{answer}")), 40, greedy);
    let got = together(&e, std::slice::from_ref(&follow));
    let want = together(&engine(&model, 1, 512, 2 * 512, None), &[follow]);
    let total = same_answers("follow-up", &got, &want);
    let reused = got[0].1.usage.cached_tokens;
    assert!(
        reused >= fa.usage.prompt_tokens + 2 * BLOCK_TOKENS,
        "the follow-up reused {reused} tokens; the first prompt had {} and its answer {answer_tokens}",
        fa.usage.prompt_tokens
    );
    // The draft computed its own rows for the reused blocks it lacked: drafting for itself, it
    // agrees with the target on every draft.
    assert!(total.drafted > 0 && total.accepted == total.drafted, "{total:?}");
}

#[test]
fn smollm2_self_draft_through_preemption_keeps_every_answer() {
    exo_kernels::threads::set_threads(1).unwrap();
    let model = Arc::new(common::model("smollm2-135m-instruct"));
    let greedy = GenerateParams { sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    let requests: Vec<Request> =
        (0..8).map(|i| request(Prompt::Text(format!("{} Story number {i}:", "Once upon a time. ".repeat(i * 3))), 40 + 10 * i, greedy.clone())).collect();
    let roomy = engine(&model, 8, 256, 8 * 256, None);
    let want = together(&roomy, &requests);
    let cfg = SpecConfig { draft_max: 8, draft_min: 1, ..SpecConfig::default() };
    let tiny = engine(&model, 8, 256, 256 + 4 * BLOCK_TOKENS, with(DraftSource::Model(model.clone()), cfg));
    let got = together(&tiny, &requests);
    let total = same_answers("self draft, tiny pool", &got, &want);
    assert_eq!(total.accepted, total.drafted);
    let load = tiny.load();
    assert!(load.preemptions > 0, "the pool was never short: {load:?}");
}

#[test]
fn smollm2_speculation_through_context_shifts_and_the_window_end_answers_as_plain_decoding() {
    exo_kernels::threads::set_threads(1).unwrap();
    let model = Arc::new(common::model("smollm2-135m-instruct"));
    let greedy = GenerateParams { sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    let ctx = 128;
    let prompt = || Prompt::Text("Facts matter. ".repeat(30));
    // Shift: generation goes on past the window, the oldest half dropped each time it fills;
    // without max_tokens under Truncate: it ends at the window.
    let requests = vec![
        Request { n_keep: Some(10), policy: Some(ContextPolicy::Shift), ..request(prompt(), 2 * ctx, greedy.clone()) },
        Request { max_tokens: None, policy: Some(ContextPolicy::Truncate), ..Request::new(prompt(), greedy.clone()) },
    ];
    let want = together(&engine(&model, 2, ctx, 4 * ctx, None), &requests);
    assert_eq!(want[0].1.reason, StopReason::MaxTokens);
    let u = want[1].1.usage;
    assert_eq!(u.prompt_tokens + u.completion_tokens, ctx, "generation ends at the window");
    let cfg = SpecConfig { draft_max: 8, draft_min: 1, ..SpecConfig::default() };
    for (name, source) in [("self draft", DraftSource::Model(model.clone())), ("prompt lookup", DraftSource::Ngram)] {
        let got = together(&engine(&model, 2, ctx, 4 * ctx, with(source, cfg)), &requests);
        let total = same_answers(name, &got, &want);
        assert!(total.accepted > 0, "{name}: {total:?}");
    }
}

#[test]
fn qwen_coder_batched_speculation_with_draft_model_or_prompt_lookup_answers_as_plain_decoding() {
    exo_kernels::threads::set_threads(1).unwrap();
    let target = Arc::new(common::model("qwen2.5-coder-1.5b-instruct"));
    let draft = Arc::new(common::model("qwen2.5-coder-0.5b-instruct"));
    let greedy = GenerateParams { sampler: SamplerConfig::greedy(), ..Default::default() };
    let requests = vec![
        request(chat("Write a Python function that returns the n-th Fibonacci number iteratively."), 40, greedy.clone()),
        request(
            chat(
                "Rename the variable `total` to `sum_of_values` in this code and show the whole result:\n\
                 def add_all(values):\n    total = 0\n    for v in values:\n        total += v\n    return total\n",
            ),
            40,
            greedy.clone(),
        ),
        request(Prompt::Text("// C: swap two ints through pointers\nvoid swap(int *a, int *b) {".into()), 40, greedy),
    ];
    let want = together(&engine(&target, 3, 512, 3 * 512, None), &requests);
    let cfg = SpecConfig::default();
    for (name, source) in [("draft model", DraftSource::Model(draft)), ("prompt lookup", DraftSource::Ngram)] {
        let got = together(&engine(&target, 3, 512, 3 * 512, with(source, cfg)), &requests);
        let total = same_answers(name, &got, &want);
        eprintln!("{name}: {total:?}, acceptance {:.2}", total.acceptance_rate());
        assert!(total.drafted > 0 && total.accepted > 0, "{name}: nothing accepted: {total:?}");
    }
}

#[test]
fn an_incompatible_draft_model_is_refused_at_start() {
    exo_kernels::threads::set_threads(1).unwrap();
    let target = Arc::new(common::model("smollm2-135m-instruct"));
    let draft = Arc::new(common::model("gemma3-270m"));
    let config = EngineConfig {
        speculation: with(DraftSource::Model(draft), SpecConfig::default()),
        kv_memory: Some(64 << 20),
        ..EngineConfig::new(256)
    };
    let err = EngineHandle::start(target, config).err().expect("a gemma3 draft for SmolLM2 must be refused").to_string();
    assert!(err.contains("gemma3-270m") && err.contains("cannot draft for"), "{err}");
    let bad = EngineConfig {
        speculation: with(DraftSource::Ngram, SpecConfig { draft_max: 2, draft_min: 3, ..SpecConfig::default() }),
        ..EngineConfig::new(256)
    };
    let err = EngineHandle::start(Arc::new(common::model("smollm2-135m-instruct")), bad).err().unwrap().to_string();
    assert!(err.contains("--draft-min 3"), "{err}");
}
