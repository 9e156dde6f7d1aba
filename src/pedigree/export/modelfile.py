"""An Ollama Modelfile for a GGUF file, prompting the model in the layout it was trained on.

    text = modelfile("model-Q8_0.gguf", tokenizer.chat_template, {"eos_token": "<|end|>"})
    (out_dir / "Modelfile").write_text(text)  # then: ollama create my-model -f out_dir/Modelfile

Ollama does not run the Jinja chat template stored in a GGUF file: it builds prompts with the Go
text/template in the Modelfile's TEMPLATE, and without one it sends the user's text bare. A
fine-tuned model prompted in another layout than the one it was trained on answers worse, and
nothing reports it. So the chat template is sorted into one of a few known layouts (by the markers
it uses, not by exact text, which differs between releases), and for each layout TEMPLATE renders
the text the Jinja template renders, for the same messages, with these deliberate differences:

- No BOS text: llama.cpp adds the BOS token itself where the GGUF's tokenizer.ggml.add_bos_token
  says so, and the text would add a second one. Where it does not, but the chat template renders
  the BOS text first, the caller passes that text as `bos_text` and TEMPLATE starts with it.
- A conversation that ends with an assistant message is left open (no end-of-turn), as in Ollama's
  own templates, so that Ollama continues that message; any other last message gets the assistant
  header, as `add_generation_prompt=True` does. Mistral's layout has no header: it ends on [/INST].
- Go templates have no `trim`: templates that strip message content (Llama 3, Gemma, Mistral's
  assistant turns) match only for content without leading or trailing whitespace.

Ollama passes every message to the template, system ones included, after joining consecutive
messages of one role with a blank line, and sets .System to all system messages joined.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pedigree.errors import PedigreeError


class ModelfileError(PedigreeError, ValueError):
    """The chat template or tokens cannot be written as an Ollama Modelfile that matches them."""


@dataclass(frozen=True)
class _Layout:
    """One family of chat templates: how to recognise it and its end-of-turn strings."""

    markers: tuple[str, ...]  # every one appears in a template of this family
    turn_ends: tuple[str, ...]  # what the model writes to end its turn (besides eos)
    example: str  # a model that uses it, for messages


_LAYOUTS = {
    "chatml": _Layout(("<|im_start|>", "<|im_end|>"), ("<|im_end|>",), "Qwen2"),
    "llama3": _Layout(
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), ("<|eot_id|>",), "Llama 3"
    ),
    "mistral": _Layout(("[INST]", "[/INST]"), (), "Mistral-7B-Instruct-v0.3"),
    "gemma": _Layout(("<start_of_turn>", "<end_of_turn>"), ("<end_of_turn>",), "Gemma"),
    # the embedded default's template (pedigree.train.tiny.CHAT_TEMPLATE) and its fine-tunes
    "pedigree": _Layout(("<|assistant|>", "<|end|>"), ("<|end|>",), "the embedded tiny model"),
}

# Templates that carry a family's markers but render a layout the family's TEMPLATE does not
# reproduce: refused by name rather than exported to prompt the model slightly wrong.
_VARIANTS = {
    "chatml": [
        (r"<\|im_sep\|>", "Phi-4's <|im_sep|> after the role"),
        (r"<think>", "reasoning blocks (<think>, as Qwen3's) in assistant turns"),
    ],
    "llama3": [
        (r"Cutting Knowledge Date", "Llama 3.1+'s dated preamble in the system turn"),
    ],
    "mistral": [
        (r"<<SYS>>", "Llama 2's <<SYS>> block"),
        (r" \[/INST\]", "the v0.1/v0.2 spacing ' [/INST]'"),
        (r"\[INST\][\"']", "the Tekken spacing '[INST]' without a space (Nemo, Small)"),
        (r"\[SYSTEM_PROMPT\]", "the v7 [SYSTEM_PROMPT] turn"),
    ],
    "pedigree": [
        (r"<\|end\|>(?:\\n|\n)", "Phi-3's newline after <|end|>"),
    ],
}

# Go template pieces. `$last` marks the final message: a final assistant message stays open so
# Ollama continues it, any other final message is followed by the assistant's header.
_EACH = "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
_IF_CLOSED = '{{ if or (not $last) (ne .Role "assistant") }}'
_IF_PROMPT = '{{ if and $last (ne .Role "assistant") }}'
_END = "{{ end }}"


def template_family(chat_template: str) -> str:
    """The family of `chat_template` (a key of the supported layouts); raises ModelfileError when
    it is none of them, more than one, or a variant whose layout differs from its family's."""
    found = [
        name
        for name, layout in _LAYOUTS.items()
        if all(marker in chat_template for marker in layout.markers)
    ]
    if len(found) != 1:
        supported = ", ".join(f"{name} ({layout.example})" for name, layout in _LAYOUTS.items())
        problem = "matches none" if not found else f"matches several ({', '.join(found)})"
        raise ModelfileError(
            f"the chat template {problem} of the layouts an Ollama TEMPLATE is written for; "
            f"supported: {supported}"
        )
    family = found[0]
    for pattern, what in _VARIANTS.get(family, []):
        if re.search(pattern, chat_template):
            raise ModelfileError(
                f"the chat template is a {family} variant with {what}, which the {family} "
                f"TEMPLATE does not reproduce; supported: the layout of "
                f"{_LAYOUTS[family].example}"
            )
    return family


def modelfile(
    gguf_name: str,
    chat_template: str,
    special_tokens: dict[str, str | None],
    parameters: dict[str, float | int] | None = None,
    adapter: str | None = None,
    bos_text: str = "",
) -> str:
    """The Modelfile for `gguf_name`, a file in the Modelfile's own directory, with the GGUF LoRA
    adapter `adapter` (a file beside it) applied when given.

    `special_tokens` holds the tokens by the names the Jinja template sees (`eos_token`, as in
    tokenizer.special_tokens_map); other keys are ignored. `parameters` become extra PARAMETER
    lines (e.g. {"num_ctx": 4096, "temperature": 0.7}), sorted by name.
    """
    for what, name in (("gguf_name", gguf_name), ("adapter", adapter)):
        if name is not None and (not name or name != name.strip()
                                 or re.search(r'[/\\\s"]', name)):
            raise ModelfileError(
                f"{what} {name!r} must be a bare file name: the Modelfile is written next to "
                "the GGUF files and names them relative to itself"
            )
    family = template_family(chat_template)
    if bos_text:
        _check_literal(bos_text, "bos_text")
    eos = special_tokens.get("eos_token")
    if eos is not None:
        _check_literal(eos, "eos_token")

    lines = [
        f"# Written by pedigree for the {family} chat template the model was trained with.",
        f"FROM ./{gguf_name}",
        *([f"ADAPTER ./{adapter}"] if adapter else []),
        f'TEMPLATE """{bos_text}{_go_template(family, chat_template, eos)}"""',
    ]
    system = _default_system(family, chat_template)
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in _stops(family, eos)]
    lines += [f"PARAMETER {key} {value}" for key, value in _parameters(parameters or {})]
    return "\n".join(lines) + "\n"


def _check_literal(text: str, what: str) -> None:
    # A quote would end the Modelfile string, and braces would read as Go template actions.
    if not text or any(bad in text for bad in ('"', "{{", "}}", "\n")):
        raise ModelfileError(
            f"{what} {text!r} cannot be written into a Modelfile: it must be non-empty, on one "
            'line, without " or {{ }}'
        )


def _stops(family: str, eos: str | None) -> list[str]:
    """End-of-turn strings, then eos; each once, in that order."""
    stops = list(_LAYOUTS[family].turn_ends)
    if eos and eos not in stops:
        stops.append(eos)
    return stops


def _go_template(family: str, chat_template: str, eos: str | None) -> str:
    if family == "chatml":
        return _turns("<|im_start|>{role}\n", "<|im_end|>\n")
    if family == "llama3":
        return _turns("<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>")
    if family == "pedigree":
        return _turns("<|{role}|>\n", "<|end|>")
    if family == "gemma":
        return _gemma(_gemma_system_separator(chat_template))
    if not eos:
        raise ModelfileError(
            "the mistral layout ends every assistant turn with the eos token, and special_tokens "
            "has no 'eos_token'; pass the tokenizer's eos token"
        )
    return _mistral(eos)


def _turns(header: str, end: str) -> str:
    """Every message as header + content + end, the header naming the message's own role (these
    Jinja templates write `message['role']` into the header, whatever it is)."""
    return (
        _EACH
        + header.format(role="{{ .Role }}")
        + "{{ .Content }}"
        + _IF_CLOSED + end + _END
        + _IF_PROMPT + header.format(role="assistant") + _END
        + _END
    )


def _gemma(separator: str) -> str:
    """Gemma's turns, the assistant named `model`. Gemma has no system turn: Gemma 3 puts the system
    message at the start of the first user turn, and so does this (Gemma 1 and 2 refuse one)."""
    role = '{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}'
    return (
        _EACH
        + '{{ if ne .Role "system" }}'
        + "<start_of_turn>" + role + "\n"
        # Gemma's templates take a system message only first, so the first user turn is 1
        + "{{ if and (eq $i 1) $.System }}{{ $.System }}" + separator + _END
        + "{{ .Content }}"
        + _IF_CLOSED + "<end_of_turn>\n" + _END
        + _END
        + _IF_PROMPT + "<start_of_turn>model\n" + _END
        + _END
    )


def _gemma_system_separator(chat_template: str) -> str:
    """What Gemma 3's template puts between the system message and the first user message:
    `first_user_prefix = messages[0]['content'] + '\\n\\n'` in Google's, a single newline in some
    fine-tunes. A template without it (Gemma 1, 2) gets Gemma 3's blank line."""
    match = re.search(r"messages\[0\]\[['\"]content['\"]\]\s*\+\s*(['\"])((?:\\n|\n)+)\1",
                      chat_template)
    # the newlines are written either as Jinja escapes (\n) or as newline characters
    return "\n" * len(re.findall(r"\\n|\n", match.group(2))) if match else "\n\n"


def _mistral(eos: str) -> str:
    """Mistral-7B-Instruct-v0.3: `[INST] user[/INST] answer</s>`; the system message goes into the
    last message when that is a user message (so a conversation ending with an answer drops it)."""
    return (
        _EACH
        + '{{ if eq .Role "user" }}[INST] '
        + "{{ if and $last $.System }}{{ $.System }}\n\n" + _END
        + "{{ .Content }}[/INST]"
        + '{{ else if eq .Role "assistant" }} {{ .Content }}'
        + "{{ if not $last }}" + eos + _END
        + _END
        + _END
    )


def _default_system(family: str, chat_template: str) -> str | None:
    """A system message the template writes when the conversation has none (Qwen2's "You are a
    helpful assistant."): Ollama adds the Modelfile's SYSTEM in the same case. Only a turn written
    out whole in one string literal of the template is recognised."""
    if family != "chatml":
        return None
    match = re.search(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}%\\\n]+)<\|im_end\|>", chat_template)
    return match.group(1) if match else None


def _parameters(parameters: dict[str, float | int]) -> list[tuple[str, str]]:
    lines = []
    for key, value in sorted(parameters.items()):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", key) or key == "stop":
            raise ModelfileError(
                f"parameter {key!r} is not allowed: use an Ollama parameter name (num_ctx, "
                "temperature, ...); stop strings come from the chat template"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelfileError(f"parameter {key} = {value!r} must be an int or a float")
        lines.append((key, repr(value)))
    return lines
