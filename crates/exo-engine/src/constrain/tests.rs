use serde_json::json;

use super::*;

fn grammar(schema: Value) -> JsonGrammar {
    JsonGrammar::from_schema(&schema).unwrap_or_else(|e| panic!("{e}"))
}

fn error(schema: Value) -> SchemaError {
    JsonGrammar::from_schema(&schema).expect_err("the schema should be refused")
}

#[test]
fn objects_follow_schema_order_required_and_additional_properties() {
    let g = grammar(json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["age"],
        "additionalProperties": false
    }));
    for ok in [r#"{"name":"x","age":3}"#, r#"{"age":3}"#, r#"{ "age" : -0 , "tags" : [ "a" , "b" ] }"#, "{\n  \"age\": 12\n}"] {
        assert!(g.accepts(ok.as_bytes()), "{ok}");
    }
    for bad in [r#"{"age":3,"name":"x"}"#, r#"{"name":"x"}"#, r#"{"age":3.5}"#, r#"{"age":3,"other":1}"#, r#"{"age":3}x"#, r#"{"age":03}"#] {
        assert!(!g.accepts(bad.as_bytes()), "{bad}");
    }
    let open = grammar(json!({"type": "object", "properties": {"a": {"type": "boolean"}}}));
    assert!(open.accepts(br#"{"a":true,"b":[1,{"c":null}]}"#));
    assert!(open.accepts(br#"{"b":1}"#));
    // An additional key may not repeat a declared one.
    assert!(!open.accepts(br#"{"b":1,"a":"x"}"#));
}

#[test]
fn whitespace_and_digits_are_bounded() {
    let g = JsonGrammar::any_object();
    assert!(g.accepts(format!("{{\n{}\"a\": 1}}", " ".repeat(20)).as_bytes()));
    assert!(!g.accepts(format!("{{\n{}\"a\": 1}}", " ".repeat(21)).as_bytes()));
    assert!(!g.accepts(b"{\n\n\"a\": 1}"));
    assert!(g.accepts(format!("{{\"a\": {}}}", "9".repeat(16)).as_bytes()));
    assert!(!g.accepts(format!("{{\"a\": {}}}", "9".repeat(17)).as_bytes()));
    assert!(!g.accepts(b"[1]"), "json_object mode wants an object");
}

#[test]
fn strings_count_characters_and_check_utf8_and_escapes() {
    let g = grammar(json!({"type": "string", "minLength": 2, "maxLength": 3}));
    assert!(g.accepts("\"é😀\"".as_bytes()));
    assert!(g.accepts(br#""\n\u00e9x""#));
    assert!(!g.accepts(br#""abcd""#));
    assert!(!g.accepts(br#""a""#));
    assert!(!g.accepts(b"\"a\xff\""), "invalid UTF-8");
    assert!(!g.accepts(b"\"\xed\xa0\x80a\""), "an encoded surrogate");
    assert!(!g.accepts(br#""\ud800x""#), "a lone surrogate escape");
    assert!(!g.accepts(b"\"a\nb\""), "a raw control character");
    assert!(!g.accepts(br#""\q1""#));
}

#[test]
fn enums_consts_unions_and_nullable() {
    let g = grammar(json!({"enum": ["red", "green", 1, 12, null, {"a": [1]}]}));
    for ok in [r#""red""#, "1", "12", "null", r#"{"a":[1]}"#] {
        assert!(g.accepts(ok.as_bytes()), "{ok}");
    }
    assert!(!g.accepts(b"2") && !g.accepts(br#""re""#));
    // Enum values are kept only where the rest of the schema allows them.
    let g = grammar(json!({"type": "string", "enum": ["a", 1, "bb"], "maxLength": 1}));
    assert!(g.accepts(br#""a""#) && !g.accepts(b"1") && !g.accepts(br#""bb""#));
    assert!(error(json!({"type": "integer", "enum": ["a"]})).message.contains("enum"));
    let g = grammar(json!({"anyOf": [{"type": "integer"}, {"type": "object", "properties": {"k": {"const": "v"}}, "required": ["k"]}]}));
    assert!(g.accepts(b"-5") && g.accepts(br#"{"k":"v"}"#) && !g.accepts(br#"{"k":"w"}"#) && !g.accepts(b"1.5"));
    let g = grammar(json!({"type": ["number", "null"]}));
    assert!(g.accepts(b"1.5e-3") && g.accepts(b"null") && !g.accepts(b"true"));
    let g = grammar(json!({"type": "string", "nullable": true}));
    assert!(g.accepts(b"null") && g.accepts(br#""x""#));
}

#[test]
fn arrays_with_prefix_items_and_bounds() {
    let g = grammar(json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false, "minItems": 1}));
    assert!(g.accepts(br#"["a"]"#) && g.accepts(br#"["a", 2]"#));
    assert!(!g.accepts(b"[]") && !g.accepts(br#"["a", 2, 3]"#) && !g.accepts(b"[2]"));
    let g = grammar(json!({"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 3}));
    assert!(g.accepts(b"[true,false]") && !g.accepts(b"[true]") && !g.accepts(b"[true,true,true,true]"));
}

#[test]
fn recursive_references_and_all_of() {
    let g = grammar(json!({
        "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"], "additionalProperties": false}},
        "allOf": [{"$ref": "#/$defs/node"}]
    }));
    assert!(g.accepts(br#"{"v":1,"kids":[{"v":2},{"v":3,"kids":[]}]}"#));
    assert!(!g.accepts(br#"{"v":1,"kids":[{"w":2}]}"#));
    let g = grammar(json!({"definitions": {"list": {"anyOf": [{"type": "null"}, {"type": "array", "prefixItems": [{"type": "integer"}, {"$ref": "#/definitions/list"}], "items": false, "minItems": 2}]}}, "$ref": "#/definitions/list"}));
    assert!(g.accepts(b"[1,[2,null]]") && !g.accepts(b"[1,[2]]"));
}

#[test]
fn unsupported_keywords_and_bad_schemas_are_named() {
    let e = error(json!({"type": "object", "properties": {"name": {"type": "string", "pattern": "^a"}}}));
    assert_eq!(e.path, "#/properties/name");
    assert!(e.message.contains("`pattern`"), "{e}");
    let e = error(json!({"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}));
    assert!(e.to_string().contains("`format`") && e.to_string().contains("#/properties/d"), "{e}");
    assert!(error(json!({"type": "integer", "minimum": 0})).message.contains("`minimum`"));
    assert!(error(json!({"$ref": "#/$defs/missing"})).message.contains("points to nothing"));
    assert!(error(json!({"$ref": "https://example.com/s.json"})).message.contains("only `#/...`"));
    assert!(error(json!({"allOf": [{"type": "string"}, {"maxLength": 3}]})).message.contains("exactly one"));
    assert_eq!(error(json!({"type": "strin"})).path, "#/type");
    assert!(error(json!({"type": "string", "minLength": 5, "maxLength": 2})).message.contains("minLength"));
    assert!(error(json!({"type": "object", "properties": {"n": {"$ref": "#"}}, "required": ["n"]})).message.contains("no finite"));
    assert!(error(json!({"type": "object", "required": ["x"], "additionalProperties": false})).message.contains("`x`"));
}

#[test]
fn one_of_needs_disjoint_alternatives() {
    let g = grammar(json!({"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind"]},
        {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]},
        {"type": "string"}
    ]}));
    assert!(g.accepts(br#"{"kind":"a","x":1}"#) && g.accepts(br#""s""#));
    let e = error(json!({"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]}));
    assert!(e.path == "#/oneOf" && e.message.contains("alternatives 0 and 1"), "{e}");
    assert!(JsonGrammar::from_schema(&json!({"oneOf": [{"type": "integer"}, {"type": "number"}]})).is_err());
}

#[test]
fn text_around_the_value() {
    let g = grammar(json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})).with_text_around("<tool_call>", "</tool_call>");
    assert!(g.accepts(b"<tool_call>\n{\"a\": 1}\n</tool_call>"));
    assert!(!g.accepts(b"<tool_call>{\"a\": 1}") && !g.accepts(b"{\"a\": 1}</tool_call>"));
}
