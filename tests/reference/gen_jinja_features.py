"""Jinja features chat templates lean on, rendered by jinja2 the way transformers sets it up.

Writes tests/fixtures/jinja_features.json: {"messages", "cases": [{"template", "rendered"}]}, each
case a one-line template exercising one construct (filters such as selectattr/map/unique/tojson,
Python string and dict methods, macros, namespace, loop variables, slicing, arithmetic, Python
value printing, whitespace control) rendered with the environment of _common.py
(trim_blocks, lstrip_blocks, loopcontrols, raise_exception, strftime_now, transformers' tojson),
bos_token "<s>", eos_token "</s>", add_generation_prompt False and no tools.

Usage: gen_jinja_features.py
"""

from _common import FIXTURES, render_chat, write_json

TEMPLATES = [
    "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}",
    "{% for m in messages | rejectattr('role', 'eq', 'system') %}{{ m.role }},{% endfor %}",
    "{{ messages[0].get('name', 'anon') }}|{{ messages[0].get('role') }}",
    "{{ '%s-%d' | format('a', 3) }}",
    "{{ messages | map(attribute='content') | join(' / ') }}",
    "{{ (messages | first).role }} {{ (messages | last)['role'] }}",
    "{% for i in range(3) %}{{ i }}{% endfor %}",
    "{% for k, v in {'b': 1, 'a': 2}.items() %}{{ k }}={{ v }};{% endfor %}",
    "{% macro f(x, y='d') %}[{{ x }}{{ y }}]{% endmacro %}{{ f(1) }}{{ f(2, y='z') }}",
    "{{ messages[0].content is string }} {{ none is none }} {{ 3 is number }} {{ [] is iterable }}",
    "{{ 'Hello World'.lower().replace('world', 'there').title() }}",
    "{{ '  x  '.strip() ~ '|' ~ '  x  '.lstrip() ~ '|' ~ '  x  '.rstrip() ~ '|' }}",
    "{{ 'a,b,,c'.split(',') }} {{ 'a b  c'.split() }}",
    "{{ messages | length > 1 and messages[1].role == 'assistant' }}",
    "{% set ns = namespace(found=false) %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}",
    "{{ 7 // 2 }} {{ 7 / 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ -1 }}",
    "{{ [1, 2] + [3] }} {{ 'ab' * 3 }}",
    "{{ {'a': none, 'b': [true, false], 'c': 1.5} }}",
    "{{ {'a': 'x\"y', 'b': \"it's\"} | tojson }} {{ \"it's\" }} {{ ['it\\'s'] }}",
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] | trim }}{% endif %}\n{% for m in messages %}\n  {{- m.role }}\n{% endfor %}\n",
    "  {% for m in messages %}\n    <{{ m.role }}>\n  {% endfor %}\n\n",
    "{{ messages[-1].content[:5] }} {{ messages[::-1] | map(attribute='role') | join(',') }}",
    "{{ 'abc' in 'xabcx' }} {{ 'role' in messages[0] }} {{ 'user' not in ['system'] }}",
    "{{ messages | tojson(indent=2) }}",
    "{{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1/3 }} {{ 10.0 }} {{ 100000000000000000.0 }}",
    "{{ 'x' if false }}|{{ none | default('d') }}|{{ undefined_var | default('u') }}|{{ '' | default('e', true) }}",
    "{{ messages | map(attribute='role') | unique | list }}",
    "{{ 'ABC' | lower }} {{ 'abc' | upper }} {{ 'hello world' | capitalize }} {{ 'a\nb' | indent(2) }}",
    "{{ messages[0].content.startswith(('Be', 'X')) }}",
    "{{ 'abc'.upper() | length }} {{ 'x'.join(['a','b']) }} {{ 'a{}b'.format(1) }}",
    "{% for m in messages %}{{ loop.index }}/{{ loop.length }}{{ loop.revindex }}{% if not loop.last %},{% endif %}{% endfor %}",
    "{{ messages[0] }}",
    "{{ 'abc'[1] }} {{ 'abc'[-1] }}",
    "{%- for m in messages -%}\n{{ m.role | upper }}\n{%- endfor %}\n",
    "{{ true and 'x' }} {{ false or 'y' }} {{ not none }}",
    "{{ [3,1,2] | sort }} {{ [3,1,2] | max }} {{ ['b','a'] | sort | first }}",
    "{{ messages | selectattr('content') | list | length }}",
    "{{ 'x' ~ 1 ~ none ~ true }}",
    "{{ {'a': 1}.keys() | list }} {{ {'a': 1}.values() | list }}",
    "{{ raise_exception is defined }} {{ strftime_now is defined }} {{ nothing is defined }}",
    "{{ 'a' + 'b' }}{# comment #}{{ 'c' }}",
    "{% raw %}{{ not rendered }}{% endraw %}",
    "{{ '\\n'.join(['a','b']) }}",
    "{{ 'tab\\there' }} {{ \"quote \\\" x\" }} {{ 'uni \\u00e9' }}",
    "{{ 5 | string + 'x' }} {{ '5' | int + 1 }} {{ 2.7 | int }} {{ '3.5' | float }}",
    "{% if messages %}yes{% else %}no{% endif %} {{ messages | count }}",
    "{{ 'Hello'.startswith('He') and 'Hello'.endswith('lo') }}",
    "{{ ' '.join('abc') }} {{ 'a-b-c'.split('-', 1) }} {{ 'Hi There'.swapcase() if false else 'ok' }}",
]
MESSAGES = [
    {"role": "system", "content": "Be brief.  "},
    {"role": "user", "content": "Hello there, friend"},
    {"role": "assistant", "content": "Hi"},
]


def main():
    cases = []
    for t in TEMPLATES:
        rendered = render_chat(t, MESSAGES, add_generation_prompt=False, bos_token="<s>", eos_token="</s>")
        cases.append({"template": t, "rendered": rendered})
    write_json(FIXTURES / "jinja_features.json", {"messages": MESSAGES, "cases": cases}, indent=1)


if __name__ == "__main__":
    main()
