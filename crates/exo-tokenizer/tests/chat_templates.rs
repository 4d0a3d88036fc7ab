//! Chat templates render exactly as Python jinja2 does for Hugging Face (fixture rendered by
//! tests/reference/gen_chat_templates.py), and template errors name their cause.

mod common;

use exo_tokenizer::{ChatMessage, ChatTemplate};

#[test]
fn fixture_cases_render_identically() {
    let cases = common::fixture("chat_templates.json");
    let cases = cases.as_array().expect("chat_templates.json is a list");
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let tmpl = ChatTemplate::new(
            case["template"].as_str().expect("template"),
            case["bos_token"].as_str().unwrap_or(""),
            case["eos_token"].as_str().unwrap_or(""),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let tools = case.get("tools").filter(|t| !t.is_null());
        let agp = case["add_generation_prompt"].as_bool().expect("add_generation_prompt");
        let got = match tmpl.render_json(&case["messages"], agp, tools) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{name}: render failed: {e}"));
                continue;
            }
        };
        let want = case["rendered"].as_str().expect("rendered");
        if got != want {
            failures.push(format!("{name}:\n--- want\n{want:?}\n--- got\n{got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

#[test]
fn typed_messages_render_like_json_ones() {
    let src = "{% for m in messages %}<{{ m.role }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}\n";
    let t = ChatTemplate::new(src, "<s>", "</s>").expect("compiles");
    let msgs = [ChatMessage { role: "user".into(), content: "hi".into() }];
    // jinja2 drops the template's single trailing newline.
    assert_eq!(t.render(&msgs, true, None).expect("renders"), "<user>hi\n<assistant>");
    assert_eq!(t.source(), src);
}

#[test]
fn python_value_printing_and_tojson() {
    let t = ChatTemplate::new(
        "{{ none }} {{ true }} {{ [1, 'a', none, 2.0] }} {{ {'k': 'é<&>'} | tojson }} {{ [] | tojson }} {{ {'a': [1, {}]} | tojson(indent=2) }}",
        "",
        "",
    )
    .expect("compiles");
    assert_eq!(
        t.render(&[], false, None).expect("renders"),
        "None True [1, 'a', None, 2.0] {\"k\": \"é<&>\"} [] {\n  \"a\": [\n    1,\n    {}\n  ]\n}"
    );
}

#[test]
fn tools_are_none_when_absent() {
    let t = ChatTemplate::new("{{ tools is none }} {% if tools %}x{% endif %}{{ tools | tojson }}", "", "")
        .expect("compiles");
    assert_eq!(t.render(&[], false, None).expect("renders"), "True null");
}

#[test]
fn raise_exception_message_is_the_error() {
    let t = ChatTemplate::new(
        "{% for m in messages %}{% if m.role == 'user' and loop.index0 % 2 == 1 %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}{% endfor %}",
        "",
        "",
    )
    .expect("compiles");
    let msgs = vec![ChatMessage { role: "user".into(), content: "a".into() }; 2];
    let err = t.render(&msgs, false, None).expect_err("raises").to_string();
    assert_eq!(err, "template: raise_exception: Conversation roles must alternate");
}

#[test]
fn syntax_error_names_the_problem() {
    let err = ChatTemplate::new("line one\n{% for m in messages %}{{ m.content }}", "", "")
        .expect_err("unclosed for")
        .to_string();
    assert!(err.starts_with("template: syntax error"), "{err}");
    assert!(err.contains("line"), "{err}");
}

#[test]
fn strftime_now_formats_today() {
    let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') | length }}", "", "")
        .expect("compiles");
    let s = t.render(&[], false, None).expect("renders");
    let (date, len) = s.split_once('|').expect("separator");
    assert_eq!(date.len(), 10, "{s}");
    assert_eq!(len, "11");
}

#[test]
fn python_string_methods_and_namespace() {
    let t = ChatTemplate::new(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.content.strip().split(' ')[0].upper() }}{% if m.content.startswith(' ') %}!{% endif %}{% endfor %}{{ ns.n }}",
        "",
        "",
    )
    .expect("compiles");
    let msgs = [ChatMessage { role: "user".into(), content: "  hello world ".into() }];
    assert_eq!(t.render(&msgs, false, None).expect("renders"), "HELLO!1");
}

#[test]
fn jinja_features_render_like_jinja2() {
    // One construct per template (tests/reference/gen_jinja_features.py).
    let fx = common::fixture("jinja_features.json");
    let mut bad = Vec::new();
    for c in fx["cases"].as_array().expect("cases") {
        let src = c["template"].as_str().expect("template");
        let want = c["rendered"].as_str().expect("rendered");
        match ChatTemplate::new(src, "<s>", "</s>").and_then(|t| t.render_json(&fx["messages"], false, None)) {
            Ok(got) if got == want => {}
            got => bad.push(format!("{src:?}\n  want {want:?}\n  got  {got:?}")),
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
