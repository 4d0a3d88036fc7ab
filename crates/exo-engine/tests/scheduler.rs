//! The continuous-batching scheduler on the real SmolLM2: batched requests answer exactly as
//! they do alone (also through preemption under a tiny KV pool), every block comes back after
//! requests end or are cancelled, a shared system prompt is computed once, and each context
//! policy behaves at its boundary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exo_engine::{
    ContextPolicy, EngineConfig, EngineHandle, EngineLoad, Event, Finished, GenerateParams, Prompt, Request, RequestStream,
    SamplerConfig, Session, StopReason,
};
use exo_models::{KvType, LoadedModel, BLOCK_TOKENS};
use serde_json::json;

fn model() -> Arc<LoadedModel> {
    // The tests run side by side: one kernel thread each keeps them from spinning against one
    // another on a small machine.
    exo_kernels::threads::set_threads(1).unwrap();
    let path = exo_models::models_dir().join("smollm2-135m-instruct.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh", path.display());
    Arc::new(exo_models::load(&path, &Default::default()).unwrap())
}

/// An engine whose KV cache holds `kv_tokens` tokens.
fn engine(model: &Arc<LoadedModel>, parallel: usize, ctx: usize, kv_tokens: usize, policy: ContextPolicy) -> EngineHandle {
    let bytes_per_token = model.transformer.new_kv_cache(KvType::F16, 0).unwrap().bytes_per_token();
    let config = EngineConfig {
        parallel,
        queue: 64,
        batch: 64,
        kv_memory: Some((kv_tokens * bytes_per_token) as u64),
        policy,
        ..EngineConfig::new(ctx)
    };
    EngineHandle::start(model.clone(), config).unwrap()
}

fn greedy(prompt: Prompt, max_tokens: usize) -> Request {
    let params = GenerateParams { sampler: SamplerConfig::greedy(), ignore_eos: true, logprobs: Some(0), ..Default::default() };
    Request { max_tokens: Some(max_tokens), ..Request::new(prompt, params) }
}

/// A stream read to its end: the generated token ids (from their log-probabilities) and how it
/// finished.
fn collect(mut s: RequestStream) -> (Vec<u32>, Finished) {
    let mut ids = Vec::new();
    while let Some(ev) = s.blocking_next() {
        match ev {
            Event::Started { .. } => {}
            Event::Chunk { logprobs, .. } => ids.extend(logprobs.iter().map(|l| l.id)),
            Event::Done(f) => return (ids, f),
            Event::Error(e) => panic!("{e}"),
        }
    }
    panic!("stream ended without Done")
}

/// Runs all `requests` at once, each read on its own thread.
fn together(e: &EngineHandle, requests: &[Request]) -> Vec<(Vec<u32>, Finished)> {
    let streams: Vec<RequestStream> = requests.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    std::thread::scope(|sc| {
        let handles: Vec<_> = streams.into_iter().map(|s| sc.spawn(move || collect(s))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn wait_idle(e: &EngineHandle) -> EngineLoad {
    let t = Instant::now();
    loop {
        let load = e.load();
        if load.running == 0 && load.queued == 0 && load.kv_blocks_free == load.kv_blocks_total {
            return load;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "blocks never came back: {load:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sixteen prompts of 3 to ~150 tokens with 5 to 50 tokens to generate each.
fn mixed_requests() -> Vec<Request> {
    let topics = ["the sea", "a dragon", "prime numbers", "Paris", "bread", "the moon", "rust", "a river"];
    (0..16)
        .map(|i| {
            let topic = topics[i % topics.len()];
            let text = format!("{} Tell me about {topic}.", "Facts matter. ".repeat(i * i / 3));
            greedy(Prompt::Text(text), 5 + (i * 7) % 46)
        })
        .collect()
}

#[test]
fn sixteen_concurrent_requests_answer_as_they_do_alone() {
    let m = model();
    let e = engine(&m, 16, 512, 16 * 512, ContextPolicy::Error);
    let requests = mixed_requests();
    let alone: Vec<Vec<u32>> = requests.iter().map(|r| collect(e.submit(r.clone()).unwrap()).0).collect();
    // A fresh engine, so no prompt is found in the prefix cache and every one is batched.
    let e = engine(&m, 16, 512, 16 * 512, ContextPolicy::Error);
    let batched = together(&e, &requests);
    for (i, ((ids, done), want)) in batched.iter().zip(&alone).enumerate() {
        assert_eq!(ids, want, "request {i}");
        assert_eq!(done.usage.completion_tokens, want.len());
    }
    let load = wait_idle(&e);
    assert_eq!(load.preemptions, 0, "{load:?}");
}

#[test]
fn preemption_under_a_tiny_pool_keeps_every_answer() {
    let m = model();
    let requests = mixed_requests();
    let roomy = engine(&m, 16, 256, 16 * 256, ContextPolicy::Error);
    let alone: Vec<Vec<u32>> = requests.iter().map(|r| collect(roomy.submit(r.clone()).unwrap()).0).collect();
    // Room for one full context and a little more: the batch cannot all fit at once.
    let tiny = engine(&m, 16, 256, 256 + 4 * BLOCK_TOKENS, ContextPolicy::Error);
    let batched = together(&tiny, &requests);
    for (i, ((ids, _), want)) in batched.iter().zip(&alone).enumerate() {
        assert_eq!(ids, want, "request {i}");
    }
    let load = wait_idle(&tiny);
    assert!(load.preemptions > 0, "the pool was never short: {load:?}");
}

#[test]
fn cancelled_requests_give_back_their_blocks_even_mid_prompt() {
    let m = model();
    let e = engine(&m, 4, 1024, 4096, ContextPolicy::Error);
    let total = e.load().kv_blocks_total;
    assert_eq!(e.load().kv_blocks_free, total);
    // A long prompt evaluated 64 tokens a step: cancelled while its prompt is being evaluated.
    let mut long = e.submit(greedy(Prompt::Text("Facts matter. ".repeat(200)), 10)).unwrap();
    assert!(matches!(long.blocking_next(), Some(Event::Started { .. })));
    long.cancel();
    // One cancelled while generating, one dropped while generating, one left to finish.
    let mut a = e.submit(greedy(Prompt::Text("Write a story.".into()), 300)).unwrap();
    let b = e.submit(greedy(Prompt::Text("Write a poem.".into()), 300)).unwrap();
    let c = e.submit(greedy(Prompt::Text("Count to ten.".into()), 20)).unwrap();
    while !matches!(a.blocking_next(), Some(Event::Chunk { .. })) {}
    a.cancel();
    drop(b);
    let (ids, done) = collect(c);
    assert_eq!((ids.len(), done.reason), (20, StopReason::MaxTokens));
    let (_, cancelled) = collect(long);
    assert_eq!(cancelled.reason, StopReason::Cancelled);
    assert_eq!(cancelled.usage.completion_tokens, 0);
    let load = wait_idle(&e);
    assert_eq!(load.kv_tokens_running, 0);
}

#[test]
fn a_shared_system_prompt_is_computed_once() {
    let m = model();
    let system = format!("You are a careful assistant. {}", "Always answer briefly and check your facts twice. ".repeat(120));
    let chat = |q: &str| Prompt::Chat {
        messages: json!([{ "role": "system", "content": system }, { "role": "user", "content": q }]),
        tools: None,
    };
    let e = engine(&m, 2, 2048, 8192, ContextPolicy::Error);
    let (_, first) = collect(e.submit(greedy(chat("What is the capital of France?"), 12)).unwrap());
    assert!(first.usage.prompt_tokens > 1000, "{:?}", first.usage);
    assert_eq!(first.usage.cached_tokens, 0);
    let (second, done) = collect(e.submit(greedy(chat("Name a large ocean."), 12)).unwrap());
    // Every full block of the shared part (the system prompt) is reused.
    assert!(done.usage.cached_tokens >= first.usage.prompt_tokens - 40, "{:?}", done.usage);
    assert!(e.load().prefix_hit_tokens >= done.usage.cached_tokens as u64);
    // The same answer as on an engine with nothing cached.
    let fresh = engine(&m, 2, 2048, 8192, ContextPolicy::Error);
    let (want, cold) = collect(fresh.submit(greedy(chat("Name a large ocean."), 12)).unwrap());
    assert_eq!(cold.usage.cached_tokens, 0);
    assert_eq!(second, want);
}

#[test]
fn truncate_drops_the_oldest_turns_and_keeps_the_system_prompt() {
    let m = model();
    let e = engine(&m, 1, 256, 1024, ContextPolicy::Truncate);
    let turn = |i: usize| {
        [
            json!({ "role": "user", "content": format!("Question {i}: tell me something about the number {i}.") }),
            json!({ "role": "assistant", "content": format!("The number {i} is a fine number, and here is a long remark about it.") }),
        ]
    };
    let mut messages = vec![json!({ "role": "system", "content": "You answer in one word." })];
    for i in 0..12 {
        messages.extend(turn(i));
    }
    messages.push(json!({ "role": "user", "content": "And the number 99?" }));
    let all = Prompt::Chat { messages: json!(messages), tools: None };
    assert!(all.tokenize(&m.tokenizer).unwrap().len() > 256, "the chat must overflow the window");
    let s = e.submit(greedy(all, 16)).unwrap();
    let n = s.prompt_tokens();
    assert!(n <= 256 - 16, "{n} prompt tokens leave no room for 16");
    let (got, _) = collect(s);
    // The same as the chat cut by hand: system prompt, the newest turns that fit, the question.
    let cut = (1..12)
        .map(|k| {
            let mut kept = vec![messages[0].clone()];
            kept.extend(messages[1 + 2 * k..].iter().cloned());
            Prompt::Chat { messages: json!(kept), tools: None }
        })
        .find(|p| p.tokenize(&m.tokenizer).unwrap().len() <= 256 - 16)
        .unwrap();
    assert_eq!(cut.tokenize(&m.tokenizer).unwrap().len(), n);
    let (want, _) = collect(e.submit(greedy(cut, 16)).unwrap());
    assert_eq!(got, want);
    // Under `error` the same chat is refused.
    let strict = Request { policy: Some(ContextPolicy::Error), ..greedy(Prompt::Chat { messages: json!(messages), tools: None }, 16) };
    assert!(e.submit(strict).is_err());
}

#[test]
fn shift_discards_half_the_window_and_goes_on() {
    let m = model();
    let ctx = 128;
    let e = engine(&m, 1, ctx, 4 * ctx, ContextPolicy::Shift);
    let prompt = Prompt::Text("Facts matter. ".repeat(40));
    let ids = prompt.tokenize(&m.tokenizer).unwrap();
    assert!(ids.len() < ctx - 4);
    let n_keep = 10;
    let max_tokens = 2 * ctx;
    let (got, done) = collect(e.submit(Request { n_keep: Some(n_keep), ..greedy(prompt, max_tokens) }).unwrap());
    assert_eq!((got.len(), done.reason), (max_tokens, StopReason::MaxTokens), "generation goes past the window");

    // Replay with a plain session: generate until the window is full, cut as llama.cpp does
    // (keep n_keep, drop half of the rest), continue from the cut tokens.
    let mut tokens = ids.clone();
    let mut session = Session::with_kv_type(&m, ctx, 64, KvType::F16).unwrap();
    let mut out: Vec<u32> = Vec::new();
    while out.len() < max_tokens {
        let room = (ctx + 1 - tokens.len()).min(max_tokens - out.len());
        let params = GenerateParams { sampler: SamplerConfig::greedy(), ignore_eos: true, max_tokens: room, ..Default::default() };
        let c = session.generate(&m, &tokens, &params, |_, _| std::ops::ControlFlow::Continue(())).unwrap();
        tokens.extend(&c.tokens);
        out.extend(&c.tokens);
        if tokens.len() > ctx {
            let discard = (tokens.len() - 1 - n_keep) / 2;
            tokens.drain(n_keep..n_keep + discard);
        }
    }
    assert_eq!(got, out);
}
