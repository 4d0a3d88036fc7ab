//! The engine handle on the real SmolLM2: answers against llama.cpp's greedy fixture, parallel
//! slots giving what a request gets alone, cancellation, the bounded queue and context checks.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exo_engine::{
    EngineConfig, EngineHandle, Event, Finished, GenerateParams, Prompt, Request, RequestStream, SamplerConfig,
    StopReason, SubmitError,
};
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";

fn engine(parallel: usize, queue: usize, ctx: usize) -> EngineHandle {
    // The tests run side by side, each with its own slots: one kernel thread each keeps them
    // from spinning against one another on a small machine.
    exo_kernels::threads::set_threads(1).unwrap();
    let path = exo_models::models_dir().join(format!("{MODEL}.gguf"));
    assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh", path.display());
    let model = exo_models::load(&path, &Default::default()).unwrap();
    let config = EngineConfig { parallel, queue, batch: 64, kv_memory: Some(64 << 20), ..EngineConfig::new(ctx) };
    EngineHandle::start(Arc::new(model), config).unwrap()
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/llamacpp/{MODEL}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn greedy(prompt: Prompt, max_tokens: usize) -> Request {
    let params = GenerateParams { sampler: SamplerConfig::greedy(), ignore_eos: true, ..Default::default() };
    Request { max_tokens: Some(max_tokens), ..Request::new(prompt, params) }
}

/// Reads a stream to its end: the text, the chunk count and how it finished.
fn collect(mut s: RequestStream) -> (String, usize, Finished) {
    let mut text = String::new();
    let mut chunks = 0;
    match s.blocking_next() {
        Some(Event::Started { prompt_tokens }) => assert_eq!(prompt_tokens, s.prompt_tokens()),
        other => panic!("expected Started first, got {other:?}"),
    }
    while let Some(ev) = s.blocking_next() {
        match ev {
            Event::Chunk { text: t, .. } => {
                text += &t;
                chunks += 1;
            }
            Event::Done(f) => {
                assert!(s.blocking_next().is_none(), "nothing may follow Done");
                return (text, chunks, f);
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    panic!("stream ended without Done")
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn chat_answer_matches_llamacpp_and_parallel_slots_match_alone() {
    let e = engine(2, 8, 512);
    let fx = fixture();
    // The chat case: the GGUF's template rendered by jinja2, greedily continued by llama.cpp.
    let case = &fx["greedy"][2];
    let eog = case["eog_at"].as_u64().unwrap() as usize;
    let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let want = e.model().tokenizer.decode(&ids[..eog], true);
    let user = "What is the capital of France? Answer in one sentence.";
    let chat = || Prompt::Chat { messages: json!([{ "role": "user", "content": user }]), tools: None };
    let params = GenerateParams { sampler: SamplerConfig::greedy(), ..Default::default() };
    let request = Request { max_tokens: Some(32), ..Request::new(chat(), params) };
    let s = e.submit(request.clone()).unwrap();
    let prompt_ids: Vec<u64> = case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(s.prompt_tokens(), prompt_ids.len(), "the chat prompt tokenizes as llama.cpp's fixture");
    let (text, _, done) = collect(s);
    assert_eq!(text, want);
    assert_eq!(done.reason, StopReason::Eog);
    assert_eq!(done.usage.completion_tokens, eog);

    // Four different prompts at once on two slots give what each gets alone.
    let prompts: Vec<Prompt> =
        fx["greedy"].as_array().unwrap().iter().map(|c| Prompt::Text(c["prompt"].as_str().unwrap().into())).collect();
    let alone: Vec<String> = prompts.iter().map(|p| collect(e.submit(greedy(p.clone(), 24)).unwrap()).0).collect();
    let streams: Vec<RequestStream> = prompts.iter().map(|p| e.submit(greedy(p.clone(), 24)).unwrap()).collect();
    let together: Vec<String> = std::thread::scope(|sc| {
        let handles: Vec<_> = streams.into_iter().map(|s| sc.spawn(move || collect(s).0)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    // The prose prompt's continuation agrees with llama.cpp up to its first near-tie.
    let margins = fx["greedy"][0]["margins"].as_array().unwrap();
    let sure = margins.iter().position(|m| m.as_f64().unwrap() < 0.3).unwrap();
    let ids: Vec<u32> = fx["greedy"][0]["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert!(alone[0].starts_with(&e.model().tokenizer.decode(&ids[..sure], true)), "{:?}", alone[0]);
}

#[test]
fn logprobs_arrive_with_their_chunks() {
    let e = engine(1, 4, 512);
    let sampler = SamplerConfig { seed: Some(5), ..SamplerConfig::default() };
    let params = GenerateParams { logprobs: Some(3), sampler, ..Default::default() };
    let mut s = e.submit(Request { max_tokens: Some(40), ..Request::new(Prompt::Text("Once upon a time".into()), params) }).unwrap();
    let tok = e.model().tokenizer.clone();
    let mut n = 0;
    while let Some(ev) = s.blocking_next() {
        match ev {
            Event::Chunk { text, logprobs } => {
                assert!(!logprobs.is_empty(), "chunk {text:?} without its tokens");
                let ids: Vec<u32> = logprobs.iter().map(|l| l.id).collect();
                assert_eq!(tok.decode(&ids, true), text, "a chunk's tokens spell its text");
                for l in &logprobs {
                    assert_eq!(l.top.len(), 3);
                    assert!(l.top.windows(2).all(|w| w[0].1 >= w[1].1));
                    assert!(l.logprob <= l.top[0].1 && l.logprob < 0.0);
                }
                n += logprobs.len();
            }
            Event::Done(f) => {
                assert_eq!(n, f.usage.completion_tokens, "every generated token is reported once");
                return;
            }
            Event::Started { .. } => {}
            Event::Error(err) => panic!("{err}"),
        }
    }
}

#[test]
fn dropping_a_stream_frees_its_slot_and_the_queue_is_bounded() {
    let e = engine(1, 1, 512);
    let long = || greedy(Prompt::Text("Write a long story about a dragon.".into()), 400);
    let mut a = e.submit(long()).unwrap();
    assert!(matches!(a.blocking_next(), Some(Event::Started { .. })));
    assert!(matches!(a.blocking_next(), Some(Event::Chunk { .. })));
    assert_eq!(e.load().running, 1);
    let b = e.submit(long()).unwrap();
    assert_eq!(e.load().queued, 1);
    match e.submit(long()) {
        Err(SubmitError::QueueFull { capacity: 1 }) => {}
        other => panic!("expected QueueFull, got {:?}", other.err()),
    }
    drop(b);
    assert_eq!(e.load().queued, 0, "a dropped queued request leaves the queue");
    drop(a);
    wait_until("the cancelled request to free its slot", || e.load().running == 0);
    let load = e.load();
    assert_eq!((load.queued, load.kv_tokens_running), (0, 0));
    assert_eq!(load.kv_blocks_free, load.kv_blocks_total, "every block is back: {load:?}");
    assert_eq!(load.kv_capacity, load.kv_blocks_total * exo_models::BLOCK_TOKENS);
    // It stopped long before its 400 tokens: the cache keeps its full blocks, a few at most.
    assert!(load.kv_tokens_cached < 100, "{load:?}");
    let (text, _, done) = collect(e.submit(greedy(Prompt::Text("Hello".into()), 4)).unwrap());
    assert_eq!(done.usage.completion_tokens, 4);
    assert!(!text.is_empty());
}

#[test]
fn requests_that_do_not_fit_are_refused_with_both_numbers() {
    let e = engine(1, 1, 64);
    let prompt = Prompt::Text("The quick brown fox jumps over the lazy dog.".into());
    let n = prompt.tokenize(&e.model().tokenizer).unwrap().len();
    let err = e.submit(greedy(prompt.clone(), 64)).err().unwrap();
    assert!(matches!(err, SubmitError::TooLong { prompt_tokens, max_tokens: 64, ctx: 64 } if prompt_tokens == n));
    let msg = err.to_string();
    let huge = e.submit(greedy(prompt.clone(), usize::MAX)).err().unwrap();
    assert!(matches!(huge, SubmitError::TooLong { max_tokens: usize::MAX, .. }), "{huge}");
    assert!(msg.contains(&format!("{n} tokens")) && msg.contains("max_tokens is 64") && msg.contains("64 tokens"), "{msg}");
    // Exactly filling the context is allowed; without max_tokens the rest of the context is used.
    let (_, _, done) = collect(e.submit(greedy(prompt.clone(), 64 - n)).unwrap());
    assert_eq!(done.usage.completion_tokens, 64 - n);
    let (_, _, done) = collect(e.submit(Request { max_tokens: None, ..greedy(prompt, 1) }).unwrap());
    assert_eq!(done.usage.completion_tokens, 64 - n);
    let long = Prompt::Text("word ".repeat(80));
    assert!(matches!(e.submit(Request { max_tokens: None, ..greedy(long, 1) }), Err(SubmitError::PromptFillsContext { ctx: 64, .. })));
    let bad = GenerateParams { sampler: SamplerConfig { top_p: 2.0, ..Default::default() }, ..Default::default() };
    let err = e.submit(Request { max_tokens: Some(1), ..Request::new(Prompt::Text("x".into()), bad) }).err().unwrap();
    assert!(err.to_string().contains("top_p"), "{err}");
}
