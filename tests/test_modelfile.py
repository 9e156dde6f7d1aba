"""Ollama Modelfiles: the Go TEMPLATE must render what the model's Jinja chat template renders.

Each case is a real chat template of its family (tool branches and long error messages trimmed).
The Jinja side is rendered by transformers, as training renders it. The Go side is rendered by a
small evaluator of Go's text/template, limited to the constructs the Modelfile uses (it refuses
anything else), fed as Ollama feeds it: the Modelfile's SYSTEM added when the conversation has no
system message, consecutive messages of one role joined, all system messages joined in .System.
The evaluator was checked against Go's own text/template on these templates when it was written.
"""

from __future__ import annotations

import json
import re

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from pedigree.export.modelfile import ModelfileError, modelfile, template_family
from pedigree.export.template_parity import modelfile_template, ollama_values
from pedigree.train.tiny import CHAT_TEMPLATE
from tests.chat_templates import GEMMA3_TEMPLATE

# ---- a Go text/template evaluator for the constructs the Modelfile uses --------------------------

_ACTION = re.compile(r"{{(.*?)}}", re.DOTALL)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[()]|[^\s()]+')
_FUNCS = {
    "eq": lambda a, *others: any(a == b for b in others),
    "ne": lambda a, b: a != b,
    "not": lambda a: not a,
    "and": lambda *args: next((a for a in args if not a), args[-1]),
    "or": lambda *args: next((a for a in args if a), args[-1]),
    "len": len,
    "slice": lambda items, start, end=None: items[start:end],  # Go: slice x 1 is x[1:]
}


def go_render(template: str, data: dict) -> str:
    nodes, _, stop = _parse(_ACTION.split(template), 0)
    assert stop is None, f"unmatched {{{{ {stop} }}}}"
    out: list[str] = []
    _run(nodes, data, {"": data}, out)
    return "".join(out)


def _parse(items: list[str], pos: int) -> tuple[list, int, str | None]:
    """Nodes up to the action that ends this block: (nodes, next position, that action)."""
    nodes: list = []
    while pos < len(items):
        item, is_action = items[pos], pos % 2 == 1  # re.split alternates text and actions
        pos += 1
        if not is_action:
            nodes.append(("text", item))
            continue
        assert not item.startswith("-") and not item.endswith("-"), "trim markers not evaluated"
        action = item.strip()
        if action == "end" or action.startswith("else"):
            return nodes, pos, action
        if action.startswith("if "):
            node, pos = _parse_if(action[3:], items, pos)
        elif match := re.fullmatch(r"range \$(\w+), \$(\w+) := (.+)", action):
            body, pos, stop = _parse(items, pos)
            assert stop == "end"
            node = ("range", match[1], match[2], _expr(match[3]), body)
        elif match := re.fullmatch(r"\$(\w+) := (.+)", action):
            node = ("set", match[1], _expr(match[2]))
        else:
            node = ("print", _expr(action))
        nodes.append(node)
    return nodes, pos, None


def _parse_if(condition: str, items: list[str], pos: int) -> tuple[tuple, int]:
    body, pos, stop = _parse(items, pos)
    orelse: list = []
    if stop is not None and stop.startswith("else if "):
        node, pos = _parse_if(stop[len("else if "):], items, pos)
        orelse = [node]  # the nested if consumed the shared {{ end }}
    else:
        if stop == "else":
            orelse, pos, stop = _parse(items, pos)
        assert stop == "end", "unterminated {{ if }}"
    return ("if", _expr(condition), body, orelse), pos


def _expr(source: str) -> list:
    tokens = _TOKEN.findall(source)
    expr = _call(tokens)
    assert not tokens, f"cannot parse {source!r}"
    return expr


def _call(tokens: list[str]) -> list:
    args: list = []
    while tokens and tokens[0] != ")":
        token = tokens.pop(0)
        if token == "(":
            args.append(_call(tokens))
            assert tokens.pop(0) == ")"
        else:
            args.append(token)
    return args


def _eval(expr, dot, scope: dict):
    if isinstance(expr, list):
        head, *args = expr
        if isinstance(head, str) and head in _FUNCS:
            return _FUNCS[head](*(_eval(a, dot, scope) for a in args))
        assert not args, f"unknown function {head!r}"
        return _eval(head, dot, scope)
    if expr.startswith('"'):
        return json.loads(expr)
    if expr.isdigit():
        return int(expr)
    name, *fields = expr.split(".")
    assert name.startswith("$") or name == "", f"unsupported operand {expr!r}"
    value = scope[name[1:]] if name else dot
    for field in filter(None, fields):
        value = value.get(field, "")  # missingkey=zero, as Ollama parses templates
    return value


def _run(nodes: list, dot, scope: dict, out: list[str]) -> None:
    for kind, *rest in nodes:
        if kind == "text":
            out.append(rest[0])
        elif kind == "print":
            out.append(str(_eval(rest[0], dot, scope)))
        elif kind == "set":
            scope[rest[0]] = _eval(rest[1], dot, scope)
        elif kind == "if":
            condition, body, orelse = rest
            _run(body if _eval(condition, dot, scope) else orelse, dot, scope, out)
        else:  # range: each element becomes dot, in a scope of its own
            index, value, expr, body = rest
            for i, item in enumerate(_eval(expr, dot, scope)):
                _run(body, item, {**scope, index: i, value: item}, out)


def ollama_prompt(modelfile_text: str, messages: list[dict[str, str]]) -> str:
    """The prompt Ollama's chat endpoint builds from these messages, by the evaluator above."""
    return go_render(modelfile_template(modelfile_text), ollama_values(modelfile_text, messages))


def test_evaluator_follows_go_semantics():
    template = (
        '{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
        '{{ if eq .Role "a" }}A{{ else if and $last $.System }}{{ $.System }}{{ else }}-{{ end }}'
        "{{ end }}"
    )
    data = {"System": "S", "Messages": [{"Role": "a"}, {"Role": "b"}, {"Role": "b"}]}
    assert go_render(template, data) == "A-S"
    with pytest.raises(AssertionError, match="trim markers"):
        go_render("{{- .System }}", data)


# ---- real chat templates ------------------------------------------------------------------------

QWEN2 = (  # Qwen2-Instruct: ChatML with a default system message
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (  # Meta-Llama-3-8B-Instruct
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
MISTRAL_V3 = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, roles must alternate") }}
    {%- endif %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported") }}
    {%- endif %}
{%- endfor %}
"""
GEMMA2 = (  # gemma-2-it: no system role
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# (chat template, family, bos_token, eos_token, whether it takes a system message)
CASES = {
    "qwen2": (QWEN2, "chatml", None, "<|im_end|>", True),
    "llama3": (LLAMA3, "llama3", "<|begin_of_text|>", "<|eot_id|>", True),
    "mistral-v0.3": (MISTRAL_V3, "mistral", "<s>", "</s>", True),
    "gemma2": (GEMMA2, "gemma", "<bos>", "<eos>", False),
    "gemma3": (GEMMA3_TEMPLATE, "gemma", "<bos>", "<eos>", True),
    "pedigree": (CHAT_TEMPLATE, "pedigree", None, "<|end|>", True),
}

SYSTEM = {"role": "system", "content": "Answer in one word."}
U1 = {"role": "user", "content": "Capital of France?"}
A1 = {"role": "assistant", "content": "Paris.\nIt is."}  # a newline inside, none around
U2 = {"role": "user", "content": "And of Italy?"}
# conversations that end with a user message, rendered with add_generation_prompt=True
PROMPTS = [[SYSTEM, U1], [SYSTEM, U1, A1, U2], [U1], [U1, A1, U2]]


def jinja_render(case: str, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    """What training renders, less the BOS text (llama.cpp adds the BOS token under Ollama)."""
    template, _, bos, eos, _ = CASES[case]
    rendered, _ = render_jinja_template(
        [messages], chat_template=template, add_generation_prompt=generation_prompt,
        bos_token=bos, eos_token=eos,
    )
    text = rendered[0]
    assert text.startswith(bos or "")
    return text[len(bos or ""):]


def case_modelfile(case: str) -> str:
    template, _, bos, eos, _ = CASES[case]
    return modelfile("model-Q8_0.gguf", template, {"bos_token": bos, "eos_token": eos})


def stops(text: str) -> list[str]:
    return re.findall(r'^PARAMETER stop "(.*)"$', text, re.MULTILINE)


@pytest.mark.parametrize("case", CASES)
def test_family_is_recognised(case):
    assert template_family(CASES[case][0]) == CASES[case][1]


@pytest.mark.parametrize("case", CASES)
def test_generation_prompt_renders_as_in_training(case):
    takes_system = CASES[case][4]
    text = case_modelfile(case)
    for messages in PROMPTS:
        if SYSTEM in messages and not takes_system:
            continue
        assert ollama_prompt(text, messages) == jinja_render(case, messages, True), messages


@pytest.mark.parametrize("case", CASES)
def test_final_answer_stays_open_and_stops_end_it(case):
    """A conversation ending with an answer renders as in training up to the answer's end, which
    Ollama leaves open (to continue it); what training writes there is one of the stops."""
    text = case_modelfile(case)
    messages = [SYSTEM, U1, A1] if CASES[case][4] else [U1, A1]
    prompt, trained = ollama_prompt(text, messages), jinja_render(case, messages, False)
    assert prompt.endswith(A1["content"]) and trained.startswith(prompt)
    assert trained[len(prompt):].rstrip("\n") in stops(text)


@pytest.mark.parametrize(
    ("case", "eos", "expected"),
    [
        ("qwen2", "<|im_end|>", ["<|im_end|>"]),
        ("qwen2", "<|endoftext|>", ["<|im_end|>", "<|endoftext|>"]),
        ("llama3", "<|end_of_text|>", ["<|eot_id|>", "<|end_of_text|>"]),
        ("mistral-v0.3", "</s>", ["</s>"]),
        ("gemma3", None, ["<end_of_turn>"]),
        ("pedigree", "<|end|>", ["<|end|>"]),
    ],
)
def test_stops_are_end_of_turn_then_eos(case, eos, expected):
    assert stops(modelfile("m.gguf", CASES[case][0], {"eos_token": eos})) == expected


def test_default_system_message_becomes_system():
    assert 'SYSTEM """You are a helpful assistant."""' in case_modelfile("qwen2").splitlines()
    assert "SYSTEM" not in case_modelfile("llama3")


def test_embedded_default_modelfile_is_pinned():
    text = modelfile("model-Q8_0.gguf", CHAT_TEMPLATE, {"eos_token": "<|end|>", "pad_token": None},
                     {"temperature": 0.7, "num_ctx": 256})
    assert text == (
        "# Written by pedigree for the pedigree chat template the model was trained with.\n"
        "FROM ./model-Q8_0.gguf\n"
        'TEMPLATE """{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
        "<|{{ .Role }}|>\n"
        '{{ .Content }}{{ if or (not $last) (ne .Role "assistant") }}<|end|>{{ end }}'
        '{{ if and $last (ne .Role "assistant") }}<|assistant|>\n'
        '{{ end }}{{ end }}"""\n'
        'PARAMETER stop "<|end|>"\n'
        "PARAMETER num_ctx 256\n"
        "PARAMETER temperature 0.7\n"
    )
    assert text == modelfile("model-Q8_0.gguf", CHAT_TEMPLATE, {"eos_token": "<|end|>"},
                             {"num_ctx": 256, "temperature": 0.7})


def test_an_adapter_and_a_bos_text_the_runtime_does_not_add():
    """gguf-lora's Modelfile applies the adapter over the base; a template that renders the BOS
    text first, for a GGUF whose tokenizer does not add it, gets that text at TEMPLATE's start."""
    text = modelfile("model-Q8_0.gguf", CHAT_TEMPLATE, {"eos_token": "<|end|>"},
                     adapter="adapter-F32.gguf", bos_text="<|bos|>")
    lines = text.splitlines()
    assert lines[1:3] == ["FROM ./model-Q8_0.gguf", "ADAPTER ./adapter-F32.gguf"]
    assert lines[3].startswith('TEMPLATE """<|bos|>{{ range $i')
    with pytest.raises(ModelfileError, match="adapter '../a.gguf' must be a bare file name"):
        modelfile("m.gguf", CHAT_TEMPLATE, {}, adapter="../a.gguf")


def test_unknown_template_names_the_supported_families():
    with pytest.raises(ModelfileError, match="chatml.*llama3.*mistral.*gemma.*pedigree"):
        template_family("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")


@pytest.mark.parametrize(
    ("template", "what"),
    [
        (CHAT_TEMPLATE.replace("'<|end|>'", "'<|end|>\n'"), "Phi-3"),
        (LLAMA3.replace("'<|end_header_id|>\n\n'", "'<|end_header_id|>\n\n"
                        "Cutting Knowledge Date: December 2023\n'"), "Llama 3.1"),
        (MISTRAL_V3.replace('"[/INST]"', '" [/INST]"'), "v0.1/v0.2"),
        (QWEN2 + "{{ '<think>\n' }}", "reasoning"),
    ],
)
def test_variants_with_another_layout_are_refused(template, what):
    with pytest.raises(ModelfileError, match=re.escape(what)):
        modelfile("m.gguf", template, {"eos_token": "</s>"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gguf_name": "out/model.gguf"}, "bare file name"),
        ({"special_tokens": {"eos_token": 'a"b'}}, "cannot be written"),
        ({"parameters": {"stop": 1}}, "stop strings come from the chat template"),
        ({"parameters": {"penalize_newline": True}}, "must be an int or a float"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    args = {"gguf_name": "m.gguf", "chat_template": CHAT_TEMPLATE,
            "special_tokens": {"eos_token": "<|end|>"}, **kwargs}
    with pytest.raises(ModelfileError, match=message):
        modelfile(**args)


def test_mistral_needs_the_eos_token():
    with pytest.raises(ModelfileError, match="eos_token"):
        modelfile("m.gguf", MISTRAL_V3, {"bos_token": "<s>"})
