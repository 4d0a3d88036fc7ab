//! Tool calls with the real models' templates and weights: format detection, prompts, calls the
//! models make on their own, and calls forced by `tool_choice`, with arguments validated by the
//! `jsonschema` crate.

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;

use exo_engine::constrain::{Constraint, TokenTrie};
use exo_engine::tools::{parse_tool_calls, Tool, ToolCalling, ToolChoice, ToolError, ToolFormat};
use exo_engine::{GenerateParams, SamplerConfig, Session, StopReason};
use exo_models::LoadedModel;
use serde_json::{json, Value};

const QWEN: &str = "qwen2.5-coder-0.5b-instruct";
const SMOLLM2: &str = "smollm2-135m-instruct";

fn tools() -> Vec<Tool> {
    Tool::list_from_openai(&json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city name"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city"],
                "additionalProperties": false
            }
        }},
        {"type": "function", "function": {
            "name": "add",
            "description": "Add two numbers",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"], "additionalProperties": false}
        }}
    ]))
    .unwrap()
}

fn question() -> Value {
    json!([{"role": "user", "content": "What is the weather like in Paris right now?"}])
}

/// Generates the reply to `messages` with `choice`, greedy.
fn reply(m: &LoadedModel, calling: &ToolCalling, messages: &Value, choice: &ToolChoice) -> (String, StopReason) {
    let tools = tools();
    let prompt = calling.render(messages, &tools, choice).unwrap();
    let ids = m.tokenizer.encode(&prompt, true, true).unwrap();
    let constraint = calling.grammar(&tools, choice).unwrap().map(|g| Arc::new(Constraint::new(g, Arc::new(TokenTrie::new(&m.tokenizer)))));
    let params = GenerateParams { max_tokens: 200, sampler: SamplerConfig::greedy(), constraint, ..GenerateParams::default() };
    let mut session = Session::new(m, 2048, 512).unwrap();
    let out = session.generate(m, &ids, &params, |_, _| ControlFlow::Continue(())).unwrap();
    (out.text, out.stop_reason)
}

/// The one call in `text`, checked against the tool's schema.
fn the_call(calling: &ToolCalling, text: &str, name: &str) -> Value {
    let names: Vec<String> = tools().iter().map(|t| t.name.clone()).collect();
    let out = parse_tool_calls(calling.format(), &names, text);
    assert!(out.errors.is_empty(), "{text:?}: {:?}", out.errors);
    assert_eq!(out.tool_calls.len(), 1, "{text:?}");
    let call = &out.tool_calls[0];
    assert_eq!(call.name, name, "{text:?}");
    let schema = &tools().into_iter().find(|t| t.name == name).unwrap().parameters;
    common::check_valid(schema, &call.arguments)
}

#[test]
fn formats_are_detected_from_the_templates() {
    let qwen = ToolCalling::detect(common::tokenizer(QWEN).chat_template().unwrap());
    assert!(qwen.is_native() && qwen.format() == ToolFormat::Hermes);
    let smol = ToolCalling::detect(common::tokenizer(SMOLLM2).chat_template().unwrap());
    assert!(!smol.is_native() && smol.format() == ToolFormat::Hermes);
    let gemma = common::tokenizer("gemma3-270m");
    assert!(gemma.chat_template().is_none());
    assert!(!ToolCalling::detect(&gemma.chat_template_or_fallback()).is_native());
}

/// Qwen's prompts for OpenAI-shaped requests (arguments as JSON strings) equal what
/// `transformers` renders for the same conversations (tests/fixtures/chat_templates.json, from
/// tests/reference/gen_chat_templates.py, where arguments are objects as transformers wants).
#[test]
fn qwen_prompts_match_transformers() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat_templates.json");
    let fixtures: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tok = common::tokenizer(QWEN);
    let calling = ToolCalling::detect(tok.chat_template().unwrap());
    let mut checked = 0;
    for case in fixtures.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if !name.starts_with(QWEN) || !case["tools"].is_array() || case["add_generation_prompt"] != true {
            continue;
        }
        assert_eq!(case["template"].as_str(), Some(tok.chat_template().unwrap().source()));
        let mut messages = case["messages"].clone();
        for m in messages.as_array_mut().unwrap() {
            for call in m.get_mut("tool_calls").and_then(Value::as_array_mut).into_iter().flatten() {
                let args = call["function"]["arguments"].to_string();
                call["function"]["arguments"] = json!(args);
            }
        }
        let tools = Tool::list_from_openai(&case["tools"]).unwrap();
        assert_eq!(calling.render(&messages, &tools, &ToolChoice::Auto).unwrap(), case["rendered"].as_str().unwrap(), "{name}");
        checked += 1;
    }
    assert_eq!(checked, 2, "the fixture's Qwen cases with tools and a generation prompt");
}

#[test]
fn prompts_carry_the_tools_natively_or_injected() {
    let history = json!([
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": -3}"}
    ]);
    let qwen_tok = common::tokenizer(QWEN);
    let qwen = ToolCalling::detect(qwen_tok.chat_template().unwrap());
    let p = qwen.render(&history, &tools(), &ToolChoice::Auto).unwrap();
    // Qwen's own template lists the tools and writes the earlier call with object arguments.
    assert!(p.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""), "{p}");
    assert!(p.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"), "{p}");
    assert!(p.contains("<tool_response>\n{\"temp\": -3}\n</tool_response>"), "{p}");
    let none = qwen.render(&history, &tools(), &ToolChoice::None).unwrap();
    assert!(!none.contains("<tools>"), "{none}");

    let smol = ToolCalling::detect(common::tokenizer(SMOLLM2).chat_template().unwrap());
    let p = smol.render(&history, &tools(), &ToolChoice::Function("add".into())).unwrap();
    assert!(p.starts_with("<|im_start|>system\nYou can call functions"), "{p}");
    assert!(p.contains(&tools()[1].to_openai().to_string()) && p.contains("You must call `add` now."), "{p}");
    assert!(p.contains("<|im_start|>assistant\n<tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}</tool_call><|im_end|>"), "{p}");
    assert!(p.contains("<|im_start|>user\n<tool_response>{\"temp\": -3}</tool_response><|im_end|>"), "{p}");
    assert!(matches!(smol.render(&json!({"role": "user"}), &tools(), &ToolChoice::Auto), Err(ToolError::Messages(_))));
}

#[test]
fn forced_calls_follow_the_parameters_schema() {
    let calling = ToolCalling::detect(common::tokenizer(QWEN).chat_template().unwrap());
    let g = calling.grammar(&tools(), &ToolChoice::Required).unwrap().unwrap();
    assert!(g.accepts(b"<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2.5}}\n</tool_call>"));
    assert!(!g.accepts(b"<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>"));
    assert!(!g.accepts(b"<tool_call>{\"name\": \"sub\", \"arguments\": {}}</tool_call>"));
    let named = calling.grammar(&tools(), &ToolChoice::Function("get_weather".into())).unwrap().unwrap();
    assert!(!named.accepts(b"<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}</tool_call>"));
    assert!(calling.grammar(&tools(), &ToolChoice::Auto).unwrap().is_none());
    assert!(matches!(calling.grammar(&tools(), &ToolChoice::Function("sub".into())), Err(ToolError::UnknownTool(n)) if n == "sub"));
    // `$ref`s inside a function's parameters still resolve once the schema is embedded.
    let with_defs = Tool { name: "t".into(), description: None, parameters: json!({"type": "object", "properties": {"u": {"$ref": "#/$defs/u"}}, "required": ["u"], "$defs": {"u": {"const": 1}}}) };
    let g = calling.grammar(&[with_defs], &ToolChoice::Required).unwrap().unwrap();
    assert!(g.accepts(b"<tool_call>{\"name\": \"t\", \"arguments\": {\"u\": 1}}</tool_call>"));
    let bad = Tool { name: "when".into(), description: None, parameters: json!({"type": "object", "properties": {"day": {"type": "string", "format": "date"}}}) };
    let e = calling.grammar(&[bad], &ToolChoice::Required).unwrap_err().to_string();
    assert!(e.contains("`when`") && e.contains("#/properties/day") && e.contains("`format`"), "{e}");
}

#[test]
fn qwen_calls_the_weather_tool() {
    let m = common::model(QWEN);
    let calling = ToolCalling::detect(m.tokenizer.chat_template().unwrap());
    for choice in [ToolChoice::Auto, ToolChoice::Required, ToolChoice::Function("get_weather".into())] {
        let (text, stop) = reply(&m, &calling, &question(), &choice);
        eprintln!("qwen, {choice:?}: {stop:?} {text:?}");
        assert_eq!(stop, StopReason::Eog, "{choice:?}: {text:?}");
        let args = the_call(&calling, &text, "get_weather");
        assert_eq!(args["city"], "Paris", "{choice:?}: {text:?}");
    }
    let (text, _) = reply(&m, &calling, &question(), &ToolChoice::Function("add".into()));
    the_call(&calling, &text, "add");
}

#[test]
fn smollm2_is_forced_into_a_valid_call() {
    let m = common::model(SMOLLM2);
    let calling = ToolCalling::detect(m.tokenizer.chat_template().unwrap());
    let (text, _) = reply(&m, &calling, &question(), &ToolChoice::Auto);
    eprintln!("smollm2, Auto: {text:?}");
    for choice in [ToolChoice::Required, ToolChoice::Function("add".into())] {
        let (text, stop) = reply(&m, &calling, &question(), &choice);
        eprintln!("smollm2, {choice:?}: {text:?}");
        assert_eq!(stop, StopReason::Eog, "{choice:?}: {text:?}");
        let name = if choice == ToolChoice::Required { "get_weather" } else { "add" };
        the_call(&calling, &text, name);
    }
}
