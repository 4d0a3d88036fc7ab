//! The `exo` command-line contract, run as a user runs it: stdout content, exit codes, and a
//! clear one-line error naming the cause for each kind of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const SMOLLM2: &str = "smollm2-135m-instruct";

fn exo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exo")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `exo args`, expecting failure with a message containing every one of `needles`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let o = exo(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "exo {args:?} should fail; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "exo {args:?}: stderr should mention '{n}': {err}");
    }
    assert!(!err.contains("panicked"), "exo {args:?} panicked: {err}");
}

fn model_file(name: &str) -> PathBuf {
    let p = exo_models::models_dir().join(format!("{name}.gguf"));
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh all", p.display());
    p
}

fn llamacpp_fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/llamacpp/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn raw_greedy_stdout_is_exactly_the_generated_text() {
    // The chat-formatted prompt of the fixture, where llama.cpp's greedy answer ends with an
    // end-of-generation token: exo must print exactly llama.cpp's text up to that point.
    let fx = llamacpp_fixture(SMOLLM2);
    let case = fx["greedy"].as_array().unwrap().iter().find(|c| !c["eog_at"].is_null()).unwrap();
    let path = model_file(SMOLLM2);
    let o = exo(&["run", path.to_str().unwrap(), case["prompt"].as_str().unwrap(), "--raw", "--temperature", "0", "-n", "32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert_eq!(text, "The capital of France is Paris.");
    assert!(case["text"].as_str().unwrap().starts_with(&text));
}

#[test]
fn interactive_chat_keeps_the_conversation() {
    use std::io::Write;
    let path = model_file(SMOLLM2);
    let mut child = Command::new(env!("CARGO_BIN_EXE_exo"))
        .args(["run", path.to_str().unwrap(), "--temperature", "0", "-n", "40"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"What is the capital of France? Answer in one sentence.\nAnd of Germany?\n/bye\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The second question only makes sense with the first turn in the context.
    assert_eq!(stdout(&o), "The capital of France is Paris.\nThe capital of Germany is Berlin.\n");
}

#[test]
fn model_names_resolve_in_the_cache() {
    model_file(SMOLLM2);
    let o = exo(&["run", SMOLLM2, "Hello", "--raw", "--temperature", "0", "-n", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).is_empty());
}

#[test]
fn chat_answer_mentions_paris() {
    let path = model_file(SMOLLM2);
    let o =
        exo(&["run", path.to_str().unwrap(), "What is the capital of France? Answer in one sentence.", "--temperature", "0", "-n", "48"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "answer: {}", stdout(&o));
}

#[test]
fn same_seed_same_text_and_stop_strings_cut() {
    let path = model_file(SMOLLM2);
    let p = path.to_str().unwrap();
    let run = |seed: &str| stdout(&exo(&["run", p, "Once upon a time", "--raw", "--seed", seed, "--temperature", "1.0", "-n", "24"]));
    assert_eq!(run("42"), run("42"));
    let full = run("42");
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 12, "24 sampled tokens give more than 12 characters: {full:?}");
    let stop: String = chars[10..12].iter().collect();
    let o = exo(&["run", p, "Once upon a time", "--raw", "--seed", "42", "--temperature", "1.0", "-n", "24", "--stop", &stop]);
    assert_eq!(stdout(&o), full[..full.find(&stop).unwrap()]);
}

#[test]
fn speculative_greedy_prints_the_plain_text_and_refuses_mismatched_drafts() {
    let path = model_file(SMOLLM2);
    let p = path.to_str().unwrap();
    let prompt = "Count from one to ten in words, separated by commas: one, two,";
    let run = |extra: &[&str]| {
        let o = exo(&[&["run", p, prompt, "--raw", "--temperature", "0", "-n", "40", "--verbose"], extra].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let plain = stdout(&run(&[]));
    for extra in [&["--spec", "ngram"][..], &["--draft", p, "--draft-max", "4"]] {
        let o = run(extra);
        assert_eq!(stdout(&o), plain, "exo run {extra:?}");
        assert!(stderr(&o).contains("[speculation: drafted "), "{}", stderr(&o));
    }
    let gemma = model_file("gemma3-270m");
    fails_with(&["run", p, prompt, "--draft", gemma.to_str().unwrap()], &["draft model", "gemma3-270m.gguf", "BOS differs"]);
    fails_with(&["run", p, prompt, "--spec", "ngram", "--draft-min", "5", "--draft-max", "2"], &["--draft-min 5"]);
    fails_with(&["run", p, prompt, "--spec", "ngram", "--draft", p], &["--draft", "--spec"]);
}

#[test]
fn tokenize_prints_llamacpps_ids() {
    let fx = llamacpp_fixture(SMOLLM2);
    let case = fx["tokenize"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["add_bos"] == true && c["special"] == false && !c["text"].as_str().unwrap().is_empty())
        .unwrap();
    let path = model_file(SMOLLM2);
    let o = exo(&["tokenize", path.to_str().unwrap(), case["text"].as_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(got, case["ids"]);
}

#[test]
fn bench_json_and_info() {
    let path = model_file(SMOLLM2);
    let o = exo(&["bench", path.to_str().unwrap(), "-p", "16", "-n", "4", "-r", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["pp_tps"].as_f64().unwrap() > 0.0 && v["tg_tps"].as_f64().unwrap() > 0.0, "{v}");
    let o = exo(&["info", path.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["layers"], 30);
    assert_eq!(v["chat_template"], true);
    assert_eq!(v["context_length"], 8192);
}

#[test]
fn bench_parallel_reports_batched_bench_columns() {
    let path = model_file(SMOLLM2);
    // -b 16 under 3 prompts of 20 tokens: calls that end one prompt and start the next.
    let args = ["bench", path.to_str().unwrap(), "--parallel", "1,3", "-p", "20", "-n", "4", "-b", "16", "-r", "1", "-t", "2", "--json"];
    let o = exo(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = v["parallel"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    for (row, b) in rows.iter().zip([1.0, 3.0]) {
        let f = |k: &str| row[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {row}"));
        assert_eq!((f("pp"), f("tg"), f("b"), f("n_kv")), (20.0, 4.0, b, b * 24.0), "{row}");
        // One repetition: each speed is exactly its tokens over its time.
        for (speed, time, tokens) in [("s_pp", "t_pp", b * 20.0), ("s_tg", "t_tg", b * 4.0), ("s", "t", b * 24.0)] {
            assert!(f(time) > 0.0 && f(time) < 60.0, "{time}: {row}");
            assert!((f(speed) * f(time) / tokens - 1.0).abs() < 1e-6, "{speed} × {time} should be {tokens}: {row}");
        }
        assert!((f("t") - f("t_pp") - f("t_tg")).abs() < 1e-9, "{row}");
    }
    // The table form has llama-batched-bench's columns and one row per B.
    let o = exo(&args[..args.len() - 1]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains("| PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |"), "{table}");
    assert!(table.contains("| 20 | 4 | 1 | 24 |") && table.contains("| 20 | 4 | 3 | 72 |"), "{table}");
}

#[test]
fn bench_parallel_refuses_bad_inputs() {
    let path = model_file(SMOLLM2);
    let p = path.to_str().unwrap();
    fails_with(&["bench", p, "--parallel", "0"], &["--parallel", "'0'", "at least 1"]);
    fails_with(&["bench", p, "--npl", "2,x"], &["--parallel", "'x' is not a number of sequences"]);
    fails_with(&["bench", p, "--parallel", "100000", "-p", "8000", "-n", "100"], &["--parallel 100000", "100000×8100 tokens", "MiB of host memory available"]);
    fails_with(&["bench", p, "--parallel", "300000000"], &["--parallel 300000000", "beyond any memory"]);
    fails_with(&["bench", p, "--parallel", "2", "-p", "8000", "-n", "500"], &["-p 8000 + -n 500", "context size 8500", "8192"]);
    fails_with(&["bench", p, "--parallel", "2", "-n", "0"], &["--parallel needs -p and -n", "-n 0"]);
    fails_with(&["bench", p, "--parallel", "2", "-b", "0"], &["-b must be at least 1"]);
    fails_with(&["bench", p, "--parallel", "2", "--ctx-size", "64"], &["--ctx-size does not apply with --parallel"]);
}

#[test]
fn unknown_model_names_the_cache() {
    fails_with(&["run", "no-such-model", "hi"], &["no-such-model", "models"]);
}

#[test]
fn wrong_magic_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.gguf");
    std::fs::write(&f, b"NOPE and some more bytes to read").unwrap();
    fails_with(&["info", f.to_str().unwrap()], &["bad.gguf", "not a GGUF file"]);
}

#[test]
fn truncated_model_names_the_tensor() {
    let src = std::fs::read(model_file(SMOLLM2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cut.gguf");
    std::fs::write(&f, &src[..src.len() / 2]).unwrap();
    fails_with(&["run", f.to_str().unwrap(), "hi", "--raw"], &["cut.gguf", "ends at byte", "but the file has"]);
}

#[test]
fn prompt_longer_than_context_names_both_numbers() {
    let path = model_file(SMOLLM2);
    let long = "word ".repeat(40);
    fails_with(&["run", path.to_str().unwrap(), &long, "--raw", "--ctx-size", "16"], &["context size is 16", "tokens"]);
}

#[test]
fn absurd_context_sizes_are_refused() {
    let path = model_file(SMOLLM2);
    let p = path.to_str().unwrap();
    fails_with(&["run", p, "hi", "--raw", "--ctx-size", "1000000000000"], &["context size 1000000000000", "8192"]);
    fails_with(&["run", p, "hi", "--raw", "--ctx-size", "0"], &["context size 0"]);
    fails_with(&["bench", p, "-p", "100000000000", "-n", "1", "-r", "1"], &["context size 100000000000", "8192"]);
    fails_with(&["bench", p, "-p", "64", "-n", "1", "-r", "1", "--ctx-size", "32"], &["--ctx-size 32", "need 64"]);
    fails_with(&["bench", p, "-p", "8", "-n", "1", "-r", "1", "--ctx-size", "100000"], &["context size 100000", "8192"]);
    fails_with(&["run", p, "hi", "--raw", "--gpu-layers", "lots"], &["--gpu-layers 'lots'", "auto or a number of layers"]);
    // Draft lengths without a way to draft would be silently ignored.
    fails_with(&["run", p, "hi", "--raw", "--draft-max", "4"], &["--draft-max", "--draft", "--spec"]);
    fails_with(&["run", p, "hi", "--raw", "--spec-always"], &["--spec-always", "--draft", "--spec"]);
    fails_with(&["serve", "-m", p, "--draft-min", "2"], &["--draft-min", "--draft", "--spec"]);
    fails_with(&["serve", "-m", p, "--spec-always"], &["--spec-always", "--draft", "--spec"]);
}

#[test]
fn absurd_thread_counts_are_refused() {
    let path = model_file(SMOLLM2);
    fails_with(&["run", path.to_str().unwrap(), "hi", "--raw", "-t", "100000"], &["100000 threads", "1024"]);
}

#[test]
fn non_utf8_prompt_is_refused_cleanly() {
    use std::os::unix::ffi::OsStrExt;
    let path = model_file(SMOLLM2);
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let o = Command::new(env!("CARGO_BIN_EXE_exo")).arg("run").arg(&path).arg(bad).arg("--raw").output().unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("UTF-8") && !err.contains("panicked"), "{err}");
}

#[test]
fn bad_sampling_values_are_named() {
    let path = model_file(SMOLLM2);
    fails_with(&["run", path.to_str().unwrap(), "hi", "--top-p", "1.5"], &["top_p 1.5"]);
}

/// A copy of the tiny Hugging Face llama fixture with `edit` applied to its directory.
fn edited_hf_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    edit(dir.path());
    dir
}

fn edit_config(dir: &Path, key: &str, value: Value) {
    let path = dir.join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(path, cfg.to_string()).unwrap();
}

#[test]
fn unknown_architecture_is_named() {
    let d = edited_hf_copy(|d| edit_config(d, "model_type", "mamba".into()));
    fails_with(&["info", d.path().to_str().unwrap()], &["config.json", "unknown architecture 'mamba'"]);
    // The same through GGUF metadata: a file holding only `general.architecture = rwkv`.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    let key = "general.architecture";
    bytes.extend((key.len() as u64).to_le_bytes());
    bytes.extend(key.as_bytes());
    bytes.extend(8u32.to_le_bytes());
    bytes.extend(4u64.to_le_bytes());
    bytes.extend(b"rwkv");
    let f = d.path().join("rwkv.gguf");
    std::fs::write(&f, bytes).unwrap();
    fails_with(&["info", f.to_str().unwrap()], &["rwkv.gguf", "unknown architecture 'rwkv'"]);
}

#[test]
fn missing_tokenizer_is_named() {
    let d = edited_hf_copy(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    fails_with(&["info", d.path().to_str().unwrap()], &["tokenizer.json"]);
}

#[test]
fn shape_disagreeing_with_config_is_named() {
    let d = edited_hf_copy(|d| edit_config(d, "intermediate_size", 40.into()));
    fails_with(&["info", d.path().to_str().unwrap()], &["model.layers.0.mlp.gate_proj.weight", "40"]);
}

const MINILM: &str = "all-minilm-l6-v2";

fn minilm_dir() -> PathBuf {
    let p = exo_models::models_dir().join(MINILM);
    assert!(p.join("model.safetensors").is_file(), "{} is missing: run scripts/fetch-models.sh all", p.display());
    p
}

/// tests/fixtures/embeddings/all-minilm-l6-v2.json, from sentence-transformers.
fn embeddings_fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/embeddings/{MINILM}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn embed_prints_sentence_transformers_vectors() {
    minilm_dir();
    let fx = embeddings_fixture();
    let picks = [0, 5, 11];
    let texts: Vec<&str> = picks.iter().map(|&i| fx["texts"][i].as_str().unwrap()).collect();
    let o = exo(&[&["embed", MINILM][..], &texts].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<Vec<f64>> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(got.len(), texts.len());
    for (ours, &i) in got.iter().zip(&picks) {
        let want: Vec<f64> = fx["vectors"][i].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let cos = dot(ours, &want) / (dot(ours, ours) * dot(&want, &want)).sqrt();
        assert!(cos >= 0.9999, "text {i}: cosine {cos} with sentence-transformers");
    }
}

#[test]
fn info_describes_an_embedding_model() {
    let fx = embeddings_fixture();
    let o = exo(&["info", minilm_dir().to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((&v["kind"], &v["architecture"]), (&"embedding".into(), &"bert".into()));
    assert_eq!(v["dim"], fx["dim"]);
    assert_eq!(v["pooling"], fx["pooling"]);
    assert_eq!(v["normalize"], fx["normalize"]);
    assert_eq!(v["max_tokens"], fx["max_seq_length"]);
    let o = exo(&["info", MINILM]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("bert (embedding model)"), "{}", stdout(&o));
}

#[test]
fn embedding_and_generative_models_refuse_each_others_commands() {
    let smollm = model_file(SMOLLM2);
    fails_with(&["embed", smollm.to_str().unwrap(), "hi"], &["smollm2-135m-instruct.gguf", "is not an embedding model"]);
    minilm_dir();
    fails_with(&["run", MINILM, "hi"], &["config.json", "'bert' is an embedding model"]);
}

#[test]
fn broken_embedding_model_is_named() {
    let src = minilm_dir();
    let d = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "modules.json"] {
        std::os::unix::fs::symlink(src.join(f), d.path().join(f)).unwrap();
    }
    fails_with(&["embed", d.path().to_str().unwrap(), "hi"], &["1_Pooling/config.json", "not found"]);
    fails_with(&["info", d.path().to_str().unwrap()], &["1_Pooling/config.json", "not found"]);
}

#[test]
fn quantize_refuses_budgets_below_the_smallest_mix() {
    let path = model_file(SMOLLM2);
    let dir = tempfile::tempdir().unwrap();
    let (p, out) = (path.to_str().unwrap(), dir.path().join("out.gguf"));
    let out = out.to_str().unwrap();
    fails_with(&["quantize", p, out, "--target-bpw", "3"], &["out.gguf", "below the smallest mix", "3.000 bits per weight"]);
    fails_with(&["quantize", p, out, "--imatrix"], &["--imatrix", "--type"]);
}

#[test]
fn quantize_auto_flags_are_checked_before_loading() {
    let p = model_file(SMOLLM2);
    let p = p.to_str().unwrap();
    fails_with(&["run", p, "hi", "--quantize", "auto"], &["--quantize auto needs --memory-budget"]);
    fails_with(&["run", p, "hi", "--quantize", "q4_K", "--memory-budget", "50MB"], &["--memory-budget", "--quantize auto only"]);
    fails_with(&["run", p, "hi", "--memory-budget", "50MB"], &["--memory-budget", "--quantize auto only"]);
    fails_with(&["run", p, "hi", "--quantize", "auto", "--memory-budget", "50 parsecs"], &["unknown size unit 'parsecs'"]);
    fails_with(&["run", p, "hi", "--quantize", "auto", "--memory-budget", "1GB", "--calibration", "/nonexistent/cal.txt"], &["--calibration", "/nonexistent/cal.txt"]);
    fails_with(&["run", p, "hi", "--quantize", "auto4"], &["--quantize 'auto4'", "nor auto"]);
    // Refused before the minutes-long analysis, naming the budget and the smallest mix.
    fails_with(&["run", p, "hi", "--quantize", "auto", "--memory-budget", "20MB"], &["20000000 bytes", "below the smallest mix"]);
    fails_with(&["serve", "-m", p, "--port", "0", "--quantize", "auto"], &["--quantize auto needs --memory-budget"]);
}
