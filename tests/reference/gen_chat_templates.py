"""Chat-template rendering fixtures, rendered by Python jinja2 exactly as Hugging Face transformers does.

Writes tests/fixtures/chat_templates.json: a list of cases

  {"name", "template", "bos_token", "eos_token", "add_generation_prompt", "messages", "tools", "rendered"}

`rendered` comes from transformers' own renderer (transformers.utils.chat_template_utils.
render_jinja_template: an ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the
loopcontrols extension, `raise_exception`, `strftime_now`, and a `tojson` filter that is plain
json.dumps with ensure_ascii=False, so no HTML escaping), given `messages`, `tools` (null when
absent), `add_generation_prompt`, `bos_token` and `eos_token` and nothing else (transformers also
passes `documents=None`). Each rendering is cross-checked against the plain-jinja2 environment in
_common.py, so the fixture does not depend on transformers' internals by accident.

Templates: the `tokenizer.chat_template` of the SmolLM2 and Qwen2.5-Coder GGUFs (read with the
`gguf` package; gemma3-270m's GGUF has none) and a few small hand-written ones that exercise the
Jinja features real templates lean on. Only successful renderings are recorded (the
`raise_exception` branches are there but not taken).
"""

import time

from _common import FIXTURES, GGUF_MODELS, gguf_metadata, gguf_path, render_chat, write_json

# --- hand-written templates --------------------------------------------------------------------

# System prompt folded into the first user turn, alternation enforced with raise_exception,
# string methods (.strip()), bos/eos tokens, loop.index0 arithmetic.
TEMPLATE_INST = """\
{% if messages[0]['role'] == 'system' %}
{% set rest = messages[1:] %}
{% set sys_text = messages[0]['content'] %}
{% else %}
{% set rest = messages %}
{% set sys_text = none %}
{% endif %}
{% for message in rest %}
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{ raise_exception('roles must go user, assistant, user, ...') }}
{% endif %}
{% if message['role'] == 'user' %}
{% if loop.first and sys_text is not none %}
{{ bos_token }}[INST] <<SYS>>
{{ sys_text.strip() }}
<</SYS>>

{{ message['content'].strip() }} [/INST]
{% else %}
{{ bos_token }}[INST] {{ message['content'].strip() }} [/INST]
{% endif %}
{% elif message['role'] == 'assistant' %}
 {{ message['content'].strip() }} {{ eos_token }}
{% endif %}
{% endfor %}
"""

# namespace() accumulation across a loop, a filtered for loop, loop.first/loop.last/loop.length,
# startswith, trim/length/upper filters, tools rendered with tojson (keyword argument included),
# whitespace control with '-', an inline if-expression and the ~ operator.
TEMPLATE_FEATURES = """\
{%- set ns = namespace(system='', turns=0) -%}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}
    {%- set ns.system = ns.system ~ m.content | trim -%}
  {%- else -%}
    {%- set ns.turns = ns.turns + 1 -%}
  {%- endif -%}
{%- endfor -%}
{%- if ns.system or tools -%}
<|system|>{{ ns.system if ns.system else 'You are a helpful assistant.' }}
{% if tools %}
You may call {{ tools | length }} tool(s):
{% for t in tools %}
{{ loop.index }}. {{ t.function.name | upper }} {{ t.function | tojson }}
{% endfor %}
Arguments as compact JSON: {{ {'name': 'x', 'arguments': {'k': [1, 2.5, true, none, 'é']}} | tojson(separators=(',', ':')) }}
{% endif %}
<|end|>
{% endif %}
{%- for m in messages if m.role != 'system' %}
{% if loop.first %}
[{{ ns.turns }} turn{{ 's' if ns.turns != 1 else '' }}, {{ loop.length }} shown]
{% endif %}
<|{{ m.role }}|>
{%- if m.content.startswith('/') %} (command){% endif %}
 {{ m.content | trim }}
{%- if m.role == 'assistant' and loop.last %}{{ eos_token }}{% endif %}

<|end|>
{% endfor %}
{% if add_generation_prompt %}
<|assistant|>
{% endif %}
"""

# Role renaming, content given either as a string or as a list of typed parts, `is string`,
# `is defined`, `in`, dict item access both ways, replace/lower/join filters, a macro, a
# `break` from the loopcontrols extension, and strftime_now (only its output's length is shown,
# so the rendering does not depend on the date).
TEMPLATE_TURNS = """\
{{ bos_token }}
{%- macro text_of(content) -%}
{%- if content is string -%}
{{ content | trim }}
{%- else -%}
{%- for part in content if part['type'] == 'text' -%}
{{ part.text | trim }}{{ ' ' if not loop.last }}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- if strftime_now is defined -%}
{%- set today = strftime_now('%Y-%m-%d') -%}
{%- endif -%}
{%- set first_user_prefix = '' -%}
{%- if messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = text_of(messages[0]['content']) ~ '\n\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if message.role not in ['user', 'assistant'] -%}
{{ raise_exception('unknown role ' ~ message.role) }}
{%- endif -%}
{%- set role = 'model' if message['role'] == 'assistant' else message.role -%}
<start_of_turn>{{ role }}
{{ first_user_prefix if loop.first else '' }}{{ text_of(message['content']) | replace('\r\n', '\n') }}<end_of_turn>
{% if loop.index >= 8 %}{% break %}{% endif %}
{%- endfor -%}
{%- if add_generation_prompt -%}
<start_of_turn>model
{% endif -%}
{%- if today is defined %}<!-- date has {{ today | length }} characters; roles: {{ loop_messages | map(attribute='role') | map('lower') | unique | join(',') }} -->{% endif %}
"""

HAND_WRITTEN = [
    ("inst", TEMPLATE_INST, "<s>", "</s>"),
    ("features", TEMPLATE_FEATURES, "<s>", "</s>"),
    ("turns", TEMPLATE_TURNS, "<bos>", "<eos>"),
]

# --- messages ----------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city (°C).",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the docs & return <= 3 hits.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "default": 3}},
            "required": ["query"],
        },
    },
}

MESSAGE_SETS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "system_user": [
        {"role": "system", "content": "You are a terse assistant.  "},
        {"role": "user", "content": "  Name one prime number.\n"},
    ],
    "multi_turn": [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "/double it"},
        {"role": "assistant", "content": "8"},
    ],
    "unicode": [
        {"role": "user", "content": "Grüße aus Köln! 日本語 🙂👩‍👩‍👧 — «quotes» \"double\" 'single' & <tags>\r\nline two\ttab"},
    ],
}

# Content as a list of typed parts (OpenAI / multimodal style); only for templates that handle it.
PARTS_SETS = {
    "content_parts": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "image"}, {"type": "text", "text": " this.\r\n"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Thanks!"},
    ],
}

TOOL_SETS = {
    "tools": (
        [{"role": "user", "content": "What's the weather in Zürich?"}],
        [WEATHER_TOOL, SEARCH_TOOL],
    ),
    "tool_call_round_trip": (
        [
            {"role": "system", "content": "Use tools when useful."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}
                ],
            },
            {"role": "tool", "content": '{"temperature": 21, "sky": "clear"}'},
        ],
        [WEATHER_TOOL],
    ),
}


def hf_render(template, messages, tools, add_generation_prompt, bos, eos):
    ours = render_chat(template, messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos, tools=tools)
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:
        return ours
    rendered, _ = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
    )
    if rendered[0] != ours:
        raise SystemExit(f"transformers and plain jinja2 disagree:\n{rendered[0]!r}\n{ours!r}")
    return rendered[0]


def gguf_templates():
    """(name, template, bos text, eos text) for each GGUF with a chat template, identical ones once."""
    out, seen = [], {}
    for name in GGUF_MODELS:
        meta = gguf_metadata(
            gguf_path(name),
            ["tokenizer.chat_template"],
            token_keys=["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"],
        )
        template = meta["tokenizer.chat_template"]
        if not template:
            print(f"  {name}: no tokenizer.chat_template")
            continue
        if template in seen:
            print(f"  {name}: same chat template as {seen[template]}")
            continue
        seen[template] = name
        bos = meta["tokenizer.ggml.bos_token_id:text"] or ""
        eos = meta["tokenizer.ggml.eos_token_id:text"] or ""
        out.append((name, template, bos, eos))
    return out


def main():
    t0 = time.time()
    templates = gguf_templates() + HAND_WRITTEN
    cases = []
    for tname, template, bos, eos in templates:
        sets = list(MESSAGE_SETS.items())
        if "tools" in template:
            sets += [(k, v[0]) for k, v in TOOL_SETS.items()]
        if "is string" in template:
            sets += list(PARTS_SETS.items())
        for mname, messages in sets:
            tools = TOOL_SETS[mname][1] if mname in TOOL_SETS else None
            ends_with_assistant = messages[-1]["role"] == "assistant"
            for agp in ([False, True] if not ends_with_assistant else [False]):
                cases.append(
                    {
                        "name": f"{tname}/{mname}/{'gen' if agp else 'nogen'}",
                        "template": template,
                        "bos_token": bos,
                        "eos_token": eos,
                        "add_generation_prompt": agp,
                        "messages": messages,
                        "tools": tools,
                        "rendered": hf_render(template, messages, tools, agp, bos, eos),
                    }
                )
    write_json(FIXTURES / "chat_templates.json", cases, indent=1)
    print(f"  {len(cases)} cases from {len(templates)} templates in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
