#!/usr/bin/env python3
"""Render real chat templates with transformers: the parity fixtures for Rill's chat_template.rs.

For every `integration-tests/fixtures/chat_templates/templates/<family>.jinja` (a model's own
chat template) and its `<family>.json` (that model's special tokens), this builds a
`PreTrainedTokenizerFast` from the Llama fixture's tokenizer.json with that template and those
tokens, and calls `apply_chat_template(..., tokenize=False)` on each conversation in CASES,
exactly as a transformers user would. It writes `renderings.json` beside the templates: the
cases' inputs once, and per family and case either the rendered text or the exception the
template (or transformers) raised. `router/src/chat_template/tests.rs` renders the same
inputs with minijinja and must produce the same text, or refuse where transformers refused.

Templates that call `strftime_now` (Llama 3.2, Granite, SmolLM3, gpt-oss) would render
today's date; the clock is pinned to NOW here and the Rust test pins its clock to the value
recorded in the file.

Run it through `scripts/chat_templates/render.sh`, which makes the virtualenv. The output is
deterministic for the pinned versions; `cargo test` needs no Python.
"""

import datetime as _dt
import json
import os
import sys

import jinja2
import transformers
from transformers import PreTrainedTokenizerFast
from transformers.utils import chat_template_utils

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIXTURES = os.path.join(ROOT, "integration-tests", "fixtures")
OUT_DIR = os.path.join(FIXTURES, "chat_templates")
TEMPLATES = os.path.join(OUT_DIR, "templates")
TOKENIZER = os.path.join(FIXTURES, "models", "llama", "tokenizer.json")

# The pinned clock: a date whose day, month and weekday names are all unambiguous.
NOW = _dt.datetime(2025, 3, 14, 9, 26, 53)


class _PinnedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return NOW if tz is None else NOW.replace(tzinfo=tz)


# transformers' strftime_now calls `datetime.now()` through this module's global.
chat_template_utils.datetime = _PinnedDatetime

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {
                    "type": "string",
                    "enum": ["celsius", "fahrenheit"],
                    "description": "The temperature unit",
                },
                "days": {"type": "integer", "description": "How many days to forecast", "default": 1},
                "threshold": {"type": "number", "description": "Rain probability to report", "default": 0.5},
            },
            "required": ["city"],
        },
    },
}

UNICODE_TOOL = {
    "type": "function",
    "function": {
        "name": "m\u00e9t\u00e9o",
        "description": "Donne la m\u00e9t\u00e9o \u00abactuelle\u00bb d'une ville \u2014 \u5929\u6c14 \U0001f326",
        "parameters": {
            "type": "object",
            "properties": {
                "ville": {"type": "string", "description": "Nom de la ville, p. ex. \"Z\u00fcrich\""},
                "scale": {"type": "number", "description": "Scale", "default": 1.0},
            },
            "required": ["ville"],
        },
    },
}

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CALL_ID = "call12345"  # 9 alphanumeric characters: Mistral refuses anything else
CALL_ID_2 = "call67890"

CASES = {
    "system_user": {
        "messages": [SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
        "add_generation_prompt": True,
    },
    "no_system": {
        "messages": [{"role": "user", "content": "Hello!"}],
        "add_generation_prompt": True,
    },
    "no_generation_prompt": {
        "messages": [{"role": "user", "content": "Hello!"}],
        "add_generation_prompt": False,
    },
    "multi_turn": {
        "messages": [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
            {"role": "user", "content": "Tell me a joke."},
        ],
        "add_generation_prompt": True,
    },
    "multi_turn_system_closed": {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "2 + 2 = 4."},
        ],
        "add_generation_prompt": False,
    },
    "unicode_and_quotes": {
        "messages": [
            SYSTEM,
            {
                "role": "user",
                "content": "\u00c7a va? \u00abGr\u00fc\u00dfe\u00bb \u4f60\u597d \U0001f30d \u2014 he said \"hi\" "
                "and 'bye' <b>&amp;</b> back\\slash\n  second line\t",
            },
        ],
        "add_generation_prompt": True,
    },
    "tools": {
        "messages": [SYSTEM, {"role": "user", "content": "What's the weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "add_generation_prompt": True,
    },
    "tools_no_system": {
        "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
        "tools": [WEATHER_TOOL, UNICODE_TOOL],
        "add_generation_prompt": True,
    },
    "tool_call_and_result": {
        "messages": [
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "role": "assistant",
                # OpenAI clients send null content with tool calls; transformers drops None keys.
                "content": None,
                "tool_calls": [
                    {
                        "id": CALL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": CALL_ID,
                "name": "get_weather",
                "content": "{\"temperature\": 18, \"condition\": \"sunny\"}",
            },
        ],
        "tools": [WEATHER_TOOL],
        "add_generation_prompt": True,
    },
    "tool_call_empty_content": {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": CALL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": CALL_ID, "name": "get_weather", "content": "18 C, sunny"},
        ],
        "tools": [WEATHER_TOOL],
        "add_generation_prompt": True,
    },
    "parallel_tool_calls": {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "Weather in Paris and in Z\u00fcrich?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": CALL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    },
                    {
                        "id": CALL_ID_2,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Z\u00fcrich", "days": 2}},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": CALL_ID, "name": "get_weather", "content": "18 C, sunny"},
            {"role": "tool", "tool_call_id": CALL_ID_2, "name": "get_weather", "content": "9 C, rain"},
        ],
        "tools": [WEATHER_TOOL],
        "add_generation_prompt": True,
    },
    "assistant_reasoning": {
        "messages": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Two plus two is four."},
            {"role": "user", "content": "And 3 + 3?"},
        ],
        "add_generation_prompt": True,
    },
    "content_parts": {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe Paris."}]}],
        "add_generation_prompt": True,
    },
    "documents": {
        "messages": [{"role": "user", "content": "Summarize the document."}],
        "documents": [{"doc_id": 1, "title": "Rivers", "text": "The Seine flows through Paris."}],
        "add_generation_prompt": True,
    },
    "kwargs_no_thinking": {
        "messages": [{"role": "user", "content": "Hello!"}],
        "add_generation_prompt": True,
        "kwargs": {"enable_thinking": False},
    },
    "kwargs_misc": {
        "messages": [SYSTEM, {"role": "user", "content": "Hello!"}],
        "add_generation_prompt": True,
        "kwargs": {"reasoning_effort": "high", "thinking": True, "date_string": "01 Jan 2025"},
    },
    "empty_messages": {
        "messages": [],
        "add_generation_prompt": True,
    },
}


# Small templates for one behaviour each (Jinja2 semantics, `tojson`, `{% generation %}`),
# rendered on SNIPPET_MESSAGES with the snippet's variables; recorded like the families' cases.
SNIPPET_MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]

JSON_VALUE = {
    "name": "caf\u00e9 \u4f60\u597d \U0001f600",
    "quote": "say \"hi\" \\ <b>&</b>",
    "controls": "tab\tnl\ncr\r\u0001\u001f\u007f\u2028",
    "ints": [0, -7, 123456789012345678],
    "floats": [1.0, 0.5, -0.0, 0.1, 1e100, 1e-07, 1.5e16, 0.0001, 123456.789, 1e16],
    "flags": [True, False, None],
    "empty": {"list": [], "dict": {}},
    "nested": {"b": 2, "a": {"y": [1, {"z": None}], "x": "1"}},
}

SNIPPETS = {
    # Undefined values as Jinja2's default Undefined treats them.
    "undefined_print": {"template": "[{{ foo }}]"},
    "undefined_attribute": {"template": "{{ foo.bar }}"},
    "undefined_defined": {"template": "{{ foo is defined }}|{{ messages is defined }}"},
    "undefined_concat": {"template": "{{ foo ~ 'x' }}"},
    "undefined_plus": {"template": "{{ foo + 'x' }}"},
    "undefined_iterate": {"template": "{% for x in foo %}x{% endfor %}done"},
    "undefined_if": {"template": "{% if foo %}yes{% else %}no{% endif %}"},
    "undefined_length": {"template": "{{ foo|length }}"},
    "undefined_default": {"template": "{{ foo|default('d') }}"},
    "undefined_in": {"template": "{{ 'a' in foo }}"},
    "undefined_plus_right": {"template": "{{ 'x' + foo }}"},
    "undefined_arithmetic": {"template": "{{ 1 + foo }}"},
    "undefined_arithmetic_left": {"template": "{{ foo * 2 }}"},
    "undefined_negate": {"template": "{{ -foo }}"},
    "undefined_slice": {"template": "{{ foo[1:] }}"},
    "undefined_filters": {"template": "[{{ foo|trim }}|{{ foo|upper }}|{{ foo|string }}|{{ foo|list }}|{{ foo|join(',') }}|{{ foo|first }}]"},
    "undefined_equals_none": {"template": "{{ foo == none }}"},
    "undefined_compare": {"template": "{{ foo < 1 }}"},
    "undefined_item": {"template": "{{ foo['a'] }}"},
    "undefined_call": {"template": "{{ foo() }}"},
    "undefined_method": {"template": "{{ foo.strip() }}"},
    "none_plus": {"template": "{{ 'x' + none }}"},
    "none_iterate": {"template": "{% for x in none %}{% endfor %}done"},
    "none_length": {"template": "{{ none|length }}"},
    "none_in": {"template": "{{ 'a' in none }}"},
    "string_plus_list": {"template": "{{ 'x' + messages }}"},
    "string_plus_int": {"template": "{{ 'x' + 1 }}"},
    "missing_key": {"template": "[{{ messages[0]['nope'] }}]"},
    "missing_index": {"template": "{{ messages[5].role }}"},
    # Python's printing and methods.
    "print_python_values": {"template": "{{ none }}|{{ true }}|{{ [1, 'a', none, 1.5] }}|{{ {'k': 'v'} }}"},
    "print_floats": {"template": "{{ 1e100 }}|{{ 0.1 + 0.2 }}|{{ 3 / 2 }}|{{ 4 / 2 }}|{{ 7 // 2 }}|{{ 1e-7 }}"},
    "string_filter": {"template": "{{ messages|string }}"},
    "string_methods": {
        "template": "{{ '  a b  '.strip() }}|{{ 'a,b'.split(',') }}|{{ 'Hello'.startswith('He') }}|"
        "{{ 'Hello'.endswith('x') }}|{{ 'hello world'.title() }}|{{ 'ab'.upper() }}|{{ 'AB'.lower() }}|"
        "{{ 'x-y'.replace('-', '+') }}|{{ '\\n\\nx'.lstrip('\\n') }}|{{ 'a b'.split() }}"
    },
    "dict_items": {"template": "{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}"},
    "reverse_slice": {"template": "{{ messages[::-1]|map(attribute='role')|join(',') }}|{{ messages[1:]|length }}"},
    "namespace": {
        "template": "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
    },
    "loop_controls": {
        "template": "{% for i in range(10) %}{% if i == 3 %}{% break %}{% endif %}"
        "{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}"
    },
    "selectattr": {"template": "{{ messages|selectattr('role', 'equalto', 'user')|list|length }}"},
    "trim_lstrip_blocks": {"template": "a\n  {% if true %}\n    b\n  {% endif %}\nc\n"},
    "strftime_now": {"template": "{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B %d, %Y %H:%M:%S %A %j') }}"},
    "raise_exception": {"template": "{% if messages|length > 1 %}{{ raise_exception('Only one message, please: got \"' ~ messages|length ~ '\"') }}{% endif %}"},
    # transformers' {% generation %} tag, with each whitespace control.
    "generation": {"template": "<{% generation %}{{ messages[1].content }}{% endgeneration %}>"},
    "generation_lines": {"template": "<\n  {% generation %}\n  {{ messages[1].content }}\n  {% endgeneration %}\n>"},
    "generation_trim": {"template": "<  {%- generation -%}  {{ messages[1].content }}  {%- endgeneration -%}  >"},
    "generation_keep": {"template": "<\n  {%+ generation +%}\n{{ messages[1].content }}\n{%+ endgeneration %}\n>"},
    "generation_scope": {
        "template": "{% set x = 'outer' %}{% generation %}{% set x = 'inner' %}{{ x }}{% endgeneration %}|{{ x }}"
    },
    # tojson: json.dumps(x, ensure_ascii=False, ...) with each argument.
    "tojson_default": {"template": "{{ x|tojson }}", "kwargs": {"x": JSON_VALUE}},
    "tojson_indent": {"template": "{{ x|tojson(indent=2) }}", "kwargs": {"x": JSON_VALUE}},
    "tojson_indent_zero": {"template": "{{ x|tojson(indent=0) }}", "kwargs": {"x": JSON_VALUE["nested"]}},
    "tojson_indent_string": {"template": "{{ x|tojson(indent='\\t') }}", "kwargs": {"x": JSON_VALUE["nested"]}},
    "tojson_sort_keys": {"template": "{{ x|tojson(sort_keys=true) }}", "kwargs": {"x": JSON_VALUE}},
    "tojson_separators": {"template": "{{ x|tojson(separators=(',', ':')) }}", "kwargs": {"x": JSON_VALUE}},
    "tojson_indent_separators": {
        "template": "{{ x|tojson(indent=1, separators=(', ', ': ')) }}",
        "kwargs": {"x": JSON_VALUE["nested"]},
    },
    "tojson_ensure_ascii": {"template": "{{ x|tojson(ensure_ascii=true) }}", "kwargs": {"x": JSON_VALUE}},
    "tojson_positional": {"template": "{{ x|tojson(true, 2) }}", "kwargs": {"x": JSON_VALUE["name"]}},
    "tojson_template_values": {"template": "{{ {'a': [1, 2.5, none, true], 'b': (1, 'x')}|tojson }}"},
    "tojson_int_keys": {"template": "{{ {1: 'a', 2: 'b'}|tojson }}"},
    "tojson_undefined": {"template": "{{ foo|tojson }}"},
    "tojson_bad_keyword": {"template": "{{ messages|tojson(indnet=2) }}"},
}


def render(tokenizer, case, chat_template=None):
    # A deep copy, so that nothing transformers does to its inputs can change the recorded ones.
    inputs = json.loads(json.dumps(case))
    return tokenizer.apply_chat_template(
        inputs["messages"],
        tools=inputs.get("tools"),
        documents=inputs.get("documents"),
        add_generation_prompt=inputs["add_generation_prompt"],
        tokenize=False,
        chat_template=chat_template,
        **inputs.get("kwargs", {}),
    )


def outcome(tokenizer, case, chat_template=None):
    try:
        return {"rendered": render(tokenizer, case, chat_template)}
    except jinja2.exceptions.TemplateError as e:
        # Exactly TemplateError is the template's own raise_exception(); subclasses
        # (UndefinedError, TemplateSyntaxError, ...) are the engine's errors.
        if type(e) is jinja2.exceptions.TemplateError:
            return {"raised": str(e)}
        return {"error": {"type": type(e).__name__, "message": str(e)}}
    except Exception as e:  # TypeError, ValueError, ...: transformers refused the input
        return {"error": {"type": type(e).__name__, "message": str(e)}}


def snippet_outcome(tokenizer, snippet):
    case = {
        "messages": SNIPPET_MESSAGES,
        "add_generation_prompt": False,
        "kwargs": snippet.get("kwargs", {}),
    }
    return outcome(tokenizer, case, snippet["template"])


def main():
    families = {}
    names = sorted(f[: -len(".jinja")] for f in os.listdir(TEMPLATES) if f.endswith(".jinja"))
    if not names:
        sys.exit(f"no templates in {TEMPLATES}")
    for name in names:
        # newline="": the template byte for byte, as Rust reads it (no newline translation).
        with open(os.path.join(TEMPLATES, name + ".jinja"), encoding="utf-8", newline="") as f:
            template = f.read()
        with open(os.path.join(TEMPLATES, name + ".json"), encoding="utf-8") as f:
            tokens = json.load(f)
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER, chat_template=template, **tokens)
        # What transformers really passes to the template, which the Rust side must pass too.
        special = dict(tokenizer.special_tokens_map)
        if special != tokens:
            sys.exit(f"{name}: transformers passes {special}, the fixture says {tokens}")
        families[name] = {
            "template": f"templates/{name}.jinja",
            "special_tokens": special,
            "results": {case_name: outcome(tokenizer, case) for case_name, case in CASES.items()},
        }
    plain = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER)
    snippets = {name: dict(snippet, **snippet_outcome(plain, snippet)) for name, snippet in SNIPPETS.items()}
    doc = {
        "generated_by": "scripts/chat_templates/render.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "now": NOW.isoformat(),
        "cases": CASES,
        "families": families,
        "snippet_messages": SNIPPET_MESSAGES,
        "snippets": snippets,
    }
    out = os.path.join(OUT_DIR, "renderings.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    refused = sum(1 for fam in families.values() for r in fam["results"].values() if "rendered" not in r)
    total = sum(len(fam["results"]) for fam in families.values())
    print(f"wrote {os.path.relpath(out, ROOT)}: {len(families)} families, {total} renderings ({refused} refused)")


if __name__ == "__main__":
    main()
