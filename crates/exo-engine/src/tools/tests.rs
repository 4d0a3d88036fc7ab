use serde_json::json;

use super::*;

fn names() -> Vec<String> {
    vec!["get_weather".into(), "add".into()]
}

fn args(c: &ToolCall) -> Value {
    serde_json::from_str(&c.arguments).unwrap()
}

const TWO_CALLS: &str = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\", \"unit\": \"c\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 1}\"}\n</tool_call>";

#[test]
fn complete_output_splits_into_content_and_calls() {
    let out = parse_tool_calls(ToolFormat::Hermes, &names(), TWO_CALLS);
    assert_eq!(out.content, "Let me check.");
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.tool_calls.len(), 2);
    assert_eq!(out.tool_calls[0].name, "get_weather");
    assert_eq!(args(&out.tool_calls[0]), json!({"city": "Zürich", "unit": "c"}));
    assert_eq!(args(&out.tool_calls[1]), json!({"a": 1}));
    assert!(out.tool_calls[0].id.starts_with("call_") && out.tool_calls[0].id.len() == 29);
    assert_ne!(out.tool_calls[0].id, out.tool_calls[1].id);
    let plain = parse_tool_calls(ToolFormat::Hermes, &names(), "Just text, a < b.");
    assert_eq!((plain.content.as_str(), plain.tool_calls.len()), ("Just text, a < b.", 0));
}

/// Feeds `text` in pieces cut at `cuts` and returns the text and calls (name, arguments).
fn streamed(format: ToolFormat, text: &str, cuts: &[usize]) -> (String, Vec<(String, Value)>, usize) {
    let mut p = ToolCallParser::new(format, names());
    let mut events = Vec::new();
    let mut last = 0;
    for &c in cuts.iter().chain([text.len()].iter()) {
        events.extend(p.push(&text[last..c]));
        last = c;
    }
    events.extend(p.finish());
    let (mut content, mut calls, mut malformed) = (String::new(), Vec::new(), 0);
    for e in events {
        match e {
            ToolEvent::Text(t) => content.push_str(&t),
            ToolEvent::Call(c) => calls.push((c.name.clone(), args(&c))),
            ToolEvent::Malformed { text, .. } => {
                content.push_str(&text);
                malformed += 1;
            }
        }
    }
    (content, calls, malformed)
}

#[test]
fn streaming_split_at_every_byte_matches_the_complete_parse() {
    let cases = [
        (ToolFormat::Hermes, TWO_CALLS),
        (ToolFormat::Hermes, "a <tool_cal is not a call, <tool_call>{\"name\": \"add\"}</tool_call> é"),
        (ToolFormat::Hermes, "<tool_call>{\"name\": \"add\", \"arguments\": {\"x\": }}</tool_call>tail"),
        (ToolFormat::LlamaJson, " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"),
        (ToolFormat::LlamaJson, "<|python_tag|>{\"name\": \"add\", \"parameters\": {}}"),
        (ToolFormat::LlamaJson, "It is sunny <|python_tag|> here."),
        (ToolFormat::Hermes, "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"),
        (ToolFormat::Hermes, "{\"answer\": 42}"),
    ];
    for (format, text) in cases {
        let whole = parse_tool_calls(format, &names(), text);
        let want_calls: Vec<(String, Value)> = whole.tool_calls.iter().map(|c| (c.name.clone(), args(c))).collect();
        for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let (content, calls, _) = streamed(format, text, &[cut]);
            assert_eq!(calls, want_calls, "{text:?} cut at {cut}");
            let content = if calls.is_empty() { content } else { content.trim().to_string() };
            assert_eq!(content, whole.content, "{text:?} cut at {cut}");
        }
        let every: Vec<usize> = (1..text.len()).filter(|&i| text.is_char_boundary(i)).collect();
        assert_eq!(streamed(format, text, &every).1, want_calls, "{text:?} one character at a time");
    }
}

#[test]
fn text_that_may_start_a_call_is_held_back_until_clear() {
    let mut p = ToolCallParser::new(ToolFormat::Hermes, names());
    assert_eq!(p.push("Hi <tool"), vec![ToolEvent::Text("Hi ".into())]);
    assert_eq!(p.push("_c"), vec![]);
    assert_eq!(p.push("at"), vec![ToolEvent::Text("<tool_cat".into())]);
    assert_eq!(p.push("<tool_call>{\"name\""), vec![]);
    assert!(matches!(p.push(": \"add\"}</tool_call>").as_slice(), [ToolEvent::Call(c)] if c.name == "add" && c.arguments == "{}"));
}

#[test]
fn malformed_calls_fall_back_to_text_with_the_reason() {
    let bad = "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": }</tool_call>";
    let out = parse_tool_calls(ToolFormat::Hermes, &names(), bad);
    assert_eq!((out.content.as_str(), out.tool_calls.len()), (bad, 0));
    assert!(out.errors[0].contains("not JSON"), "{:?}", out.errors);
    let unknown = parse_tool_calls(ToolFormat::Hermes, &names(), "<tool_call>{\"name\": \"rm_rf\"}</tool_call>");
    assert!(unknown.errors[0].contains("`rm_rf`") && unknown.tool_calls.is_empty());
    let not_object = parse_tool_calls(ToolFormat::Hermes, &names(), "<tool_call>{\"name\": \"add\", \"arguments\": [1]}</tool_call>");
    assert!(not_object.errors[0].contains("not a JSON object"));
    // A call the model did not close still counts if its JSON is complete.
    let open = parse_tool_calls(ToolFormat::Hermes, &names(), "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2}}\n");
    assert_eq!(open.tool_calls.len(), 1);
    // A bare JSON reply is a call if it names a tool, content if it does not try to.
    let bare = parse_tool_calls(ToolFormat::Hermes, &names(), " {\"name\": \"add\", \"arguments\": {\"a\": 1}}");
    assert_eq!((bare.tool_calls.len(), bare.content.as_str()), (1, ""));
    let json_content = parse_tool_calls(ToolFormat::Hermes, &names(), "{\"answer\": 42}");
    assert_eq!((json_content.tool_calls.len(), json_content.content.as_str(), json_content.errors.len()), (0, "{\"answer\": 42}", 0));
    let cut = parse_tool_calls(ToolFormat::Hermes, &names(), "<tool_call>\n{\"name\": \"add\", \"argu");
    assert_eq!((cut.tool_calls.len(), cut.errors.len()), (0, 1));
    assert_eq!(cut.content, "<tool_call>\n{\"name\": \"add\", \"argu");
}

fn weather() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Current weather in a city".into()),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/unit"}},
            "required": ["city"],
            "additionalProperties": false,
            "$defs": {"unit": {"enum": ["celsius", "fahrenheit"]}}
        }),
    }
}

#[test]
fn openai_tools_and_tool_choice_are_read_with_clear_errors() {
    let tools = Tool::list_from_openai(&json!([weather().to_openai()])).unwrap();
    assert_eq!(tools, vec![weather()]);
    let bad = Tool::list_from_openai(&json!([weather().to_openai(), {"type": "function", "function": {"name": "has space"}}]));
    assert!(matches!(&bad, Err(ToolError::InvalidTool { index: 1, problem }) if problem.contains("has space")), "{bad:?}");
    assert!(Tool::list_from_openai(&json!([{"type": "retrieval"}])).unwrap_err().to_string().contains("retrieval"));
    assert_eq!(ToolChoice::from_openai(None).unwrap(), ToolChoice::Auto);
    assert_eq!(ToolChoice::from_openai(Some(&json!("required"))).unwrap(), ToolChoice::Required);
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    assert_eq!(ToolChoice::from_openai(Some(&named)).unwrap(), ToolChoice::Function("get_weather".into()));
    assert!(ToolChoice::from_openai(Some(&json!("always"))).unwrap_err().to_string().contains("always"));
}
