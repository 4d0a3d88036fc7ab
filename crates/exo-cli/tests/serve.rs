//! `exo serve` driven by the real client libraries: each test starts the `exo` binary on a free
//! port with SmolLM2 (and all-MiniLM-L6-v2 for embeddings) and runs one of the Python scripts in
//! tests/clients/ (written against the `openai`, `ollama` and `anthropic` packages pinned in
//! tests/clients/requirements.txt), which exits non-zero if any of its checks fails. The Python
//! environment comes from scripts/setup-clients.sh (scripts/test.sh runs it first).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SMOLLM2: &str = "smollm2-135m-instruct";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct";
/// The sentence-transformers directory served for embeddings.
const MINILM: &str = "all-minilm-l6-v2";

/// The Python of the clients' virtual environment.
fn client_python() -> PathBuf {
    let dev_home = std::env::var_os("EXO_DEV_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/exo-dev"));
    let python = dev_home.join("venv-clients/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup-clients.sh to install the API clients these tests use",
        python.display()
    );
    python
}

fn require_model(name: &str) {
    let p = exo_models::models_dir().join(format!("{name}.gguf"));
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh all", p.display());
}

/// A running `exo serve`, stopped on drop.
struct Served {
    child: Child,
    url: String,
    api_key: Option<&'static str>,
    log: Arc<Mutex<String>>,
}

impl Served {
    /// Starts `exo serve ARGS --port 0` (one kernel thread, so tests running side by side on a
    /// small machine do not fight over cores) and waits for the address it prints.
    fn start(args: &[&str], api_key: Option<&'static str>) -> Self {
        require_model(SMOLLM2);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_exo"));
        cmd.arg("serve").args(args).args(["--port", "0", "-t", "1"]).env_remove("EXO_API_KEY");
        if let Some(key) = api_key {
            cmd.env("EXO_API_KEY", key);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("starting exo serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("exo serve: listening on ") {
                    let _ = tx.send(addr.to_string());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("exo serve did not report its address; stderr:\n{}", log.lock().unwrap());
            }
        };
        Served { child, url, api_key, log }
    }

    /// Runs tests/clients/SCRIPT against this server.
    fn run_clients(&mut self, script: &str) {
        self.run_clients_with(script, &[]);
    }

    /// [`Served::run_clients`] with more environment variables for the script.
    fn run_clients_with(&mut self, script: &str, env: &[(&str, &str)]) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients");
        let mut cmd = Command::new(client_python());
        cmd.arg(dir.join(script))
            .current_dir(&dir)
            .env("EXO_URL", &self.url)
            .env("EXO_MODEL", SMOLLM2)
            .env("EXO_BIN", env!("CARGO_BIN_EXE_exo"))
            .env("EXO_PID", self.child.id().to_string())
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("EXO_API_KEY")
            .envs(env.iter().copied());
        if let Some(key) = self.api_key {
            cmd.env("EXO_API_KEY", key);
        }
        let out = cmd.output().expect("running the client script");
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("{report}");
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("exo serve exited ({status}) during {script}; its stderr:\n{}", self.log.lock().unwrap());
        }
        assert!(out.status.success(), "{script} failed:\n{report}\nserver stderr:\n{}", self.log.lock().unwrap());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server most scripts use: SmolLM2 plus Qwen (whose template renders tools), four slots.
fn main_server() -> Served {
    require_model(QWEN);
    Served::start(&["-m", SMOLLM2, "-m", &format!("qwen={QWEN}"), "--parallel", "4", "--ctx-size", "2048"], None)
}

#[test]
fn openai_client() {
    main_server().run_clients("test_openai.py");
}

#[test]
fn ollama_client() {
    main_server().run_clients("test_ollama.py");
}

#[test]
fn anthropic_client() {
    main_server().run_clients("test_anthropic.py");
}

#[test]
fn eight_concurrent_clients_match_alone() {
    main_server().run_clients("test_concurrency.py");
}

#[test]
fn load_run_leaves_no_trace() {
    // A KV pool of ~45 blocks for 16 parallel requests: they wait for blocks and get preempted.
    let args = ["-m", SMOLLM2, "--parallel", "16", "--ctx-size", "512", "--kv-memory", "16MiB"];
    Served::start(&args, None).run_clients("test_load.py");
}

#[test]
fn greedy_answers_equal_exo_run() {
    main_server().run_clients("test_exo_run.py");
}

#[test]
fn speculation_answers_as_plain_serving_and_reports_its_counts() {
    let common = ["-m", SMOLLM2, "--parallel", "4", "--ctx-size", "1024"];
    let plain = Served::start(&common, None);
    // Every step speculates, so every answer has counts to check: by default the server would
    // soon decode plainly, SmolLM2 drafting for itself costing as much as it saves.
    let ngram = Served::start(&[&common[..], &["--spec", "ngram", "--spec-always"]].concat(), None);
    let mut draft = Served::start(&[&common[..], &["--draft", SMOLLM2, "--draft-max", "6", "--spec-always"]].concat(), None);
    draft.run_clients_with("test_speculation.py", &[("EXO_PLAIN_URL", &plain.url), ("EXO_NGRAM_URL", &ngram.url)]);
}

#[test]
fn embeddings_through_both_clients() {
    let dir = exo_models::models_dir().join(MINILM);
    assert!(dir.is_dir(), "{} is missing: run scripts/fetch-models.sh all", dir.display());
    // One slot and a queue of one, so that a flood of requests is refused quickly.
    let args = ["-m", MINILM, "-m", SMOLLM2, "--parallel", "1", "--queue-size", "1", "--ctx-size", "512"];
    Served::start(&args, None).run_clients("test_embeddings.py");
}

#[test]
fn key_body_context_queue_and_disconnect_limits() {
    let args = ["-m", SMOLLM2, "--parallel", "1", "--queue-size", "1", "--ctx-size", "256", "--max-body", "65536"];
    Served::start(&args, Some("test-key-5f2c")).run_clients("test_limits.py");
}

#[test]
fn bad_flags_and_models_are_refused_before_serving() {
    let exo = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_exo")).args(args).output().unwrap();
    let o = exo(&["serve", "-m", "no-such-model", "--port", "0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no-such-model"), "{err}");
    let o = exo(&["serve", "-m", SMOLLM2, "-m", SMOLLM2, "--port", "0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("two models are named 'smollm2-135m-instruct'"), "{err}");
    let o = exo(&["serve", "-m", SMOLLM2, "--parallel", "0"]);
    assert!(!o.status.success());
    // A context beyond the model's is refused when the model loads, and the server exits.
    let o = exo(&["serve", "-m", SMOLLM2, "--port", "0", "--ctx-size", "100000"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("context size 100000") && !err.contains("panicked"), "{err}");
    // KV cache settings: an unknown type, an unparseable size, and a cache too small for one
    // context (refused at load with the numbers and the flag to raise).
    let o = exo(&["serve", "-m", SMOLLM2, "--kv-type", "q3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("unknown KV cache type 'q3'"), "{err}");
    let o = exo(&["serve", "-m", SMOLLM2, "--kv-memory", "lots"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("'lots' is not a size"), "{err}");
    let o = exo(&["serve", "-m", SMOLLM2, "--port", "0", "--ctx-size", "512", "--kv-memory", "1MiB"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("raise --kv-memory") && err.contains("512 tokens") && !err.contains("panicked"), "{err}");
    // Speculation: a draft with another vocabulary (refused at load, naming both models and
    // what differs), draft lengths out of order, and two drafters at once.
    let o = exo(&["serve", "-m", SMOLLM2, "--port", "0", "--ctx-size", "512", "--draft", "gemma3-270m"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("gemma3-270m") && err.contains("cannot draft for") && err.contains(SMOLLM2) && !err.contains("panicked"),
        "{err}"
    );
    let o = exo(&["serve", "-m", SMOLLM2, "--spec", "ngram", "--draft-max", "2", "--draft-min", "3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--draft-min 3 and --draft-max 2"), "{err}");
    let o = exo(&["serve", "-m", SMOLLM2, "--spec", "ngram", "--draft", SMOLLM2]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--draft") && err.contains("--spec"), "{err}");
    let o = exo(&["serve", "-m", SMOLLM2, "--context-policy", "squeeze"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("unknown context policy 'squeeze'"), "{err}");
    // A GPU asked for by name in a build without the cuda feature (as CI's) is refused, not
    // silently replaced by the CPU.
    if exo_models::cuda_devices() == 0 {
        let o = exo(&["serve", "-m", SMOLLM2, "--device", "cuda:0"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("--device cuda:0") && err.contains("cuda"), "{err}");
    }
    // Likewise an Apple GPU without the metal feature (every Linux build).
    if !cfg!(feature = "metal") {
        let o = exo(&["serve", "-m", SMOLLM2, "--device", "metal"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("--device metal:0") && err.contains("without the metal feature"), "{err}");
    }
    let o = exo(&["serve", "-m", SMOLLM2, "--device", "metal:x"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--device 'metal:x'") && err.contains("metal:N"), "{err}");
}

/// Status code and body of `GET path`, over a plain socket.
fn http_get(url: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, response)
}

#[test]
fn health_is_503_until_the_models_are_loaded() {
    // Qwen2.5-Coder-1.5B takes a good part of a second to load: long enough to ask before.
    let big = "qwen2.5-coder-1.5b-instruct";
    require_model(big);
    let s = Served::start(&["-m", big, "--ctx-size", "512"], None);
    let (status, body) = http_get(&s.url, "/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"loading\""), "{body}");
    let (status, body) = http_get(&s.url, "/v1/models");
    assert_eq!(status, 503, "{body}");
    assert!(body.to_lowercase().contains("retry-after: 1") && body.contains("still loading"), "{body}");
    for _ in 0..600 {
        if http_get(&s.url, "/health").0 == 200 {
            let (status, body) = http_get(&s.url, "/v1/models");
            assert!(status == 200 && body.contains(big), "{body}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not ready after 30 s; stderr:\n{}", s.log.lock().unwrap());
}
