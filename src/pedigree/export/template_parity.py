"""Chat-template parity: one conversation, three renderings, the same token ids.

A fine-tuned model that "acts differently" after export is most often prompted differently. Three
runtimes render a conversation for it:

- transformers: the tokenizer's Jinja chat template, as training rendered it (`apply_chat_template`);
- llama.cpp: the Jinja template embedded in the GGUF file (`tokenizer.chat_template`), with the
  file's BOS and EOS texts, then tokenized with the BOS token added where the file says so (a
  leading BOS text is dropped first, as llama.cpp's chat code does, so it is not doubled). The
  embedded template is rendered here by the same Jinja engine as transformers': what is checked
  is that the file carries the template and the special tokens training used;
- Ollama: the Modelfile's Go TEMPLATE, executed by Go's own text/template (a small program built
  with `go build` from ollama_template/main.go), fed the messages as Ollama's chat endpoint
  collates them, then tokenized like llama.cpp's.

Every rendering becomes token ids, and the ids must be equal, or the check fails naming the first
conversation that differs and where. Conversations ending with a user message are rendered with
the generation prompt; those ending with an answer without it, where Ollama leaves the answer open
(to continue it), which is transformers' `continue_final_message`. Without Go on PATH the Ollama
rendering is skipped and the report says so (PEDIGREE_REQUIRE_GO=1 makes that an error).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pedigree.errors import PedigreeError

GO_SOURCE = Path(__file__).with_name("ollama_template") / "main.go"
REQUIRE_GO = "PEDIGREE_REQUIRE_GO"

_SYSTEM = {"role": "system", "content": "You are a concise assistant."}
_U1 = {"role": "user", "content": "What is the capital of France?"}
_A1 = {"role": "assistant", "content": "Paris."}
_U2 = {"role": "user", "content": "And of Italy?"}
_A2 = {"role": "assistant", "content": "Rome."}
# Probes beside the check rows: system or not, one turn or several, open or answered.
PROBES = {
    "system, one question": [_SYSTEM, _U1],
    "system, two turns": [_SYSTEM, _U1, _A1, _U2],
    "one question": [_U1],
    "two turns, answered": [_U1, _A1, _U2, _A2],
    "system, answered": [_SYSTEM, _U1, _A1],
}


class TemplateParityError(PedigreeError, RuntimeError):
    """Two runtimes give the model different tokens for the same conversation."""


@dataclass(frozen=True)
class GGUFChat:
    """What llama.cpp reads from a GGUF file to prompt the model."""

    template: str
    bos: str | None  # the BOS token's text
    eos: str | None
    bos_id: int | None
    add_bos: bool


def gguf_chat(path: Path) -> GGUFChat:
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def value(key: str):
        field = reader.get_field(key)
        return None if field is None else field.contents()

    template = value("tokenizer.chat_template")
    if not template:
        raise TemplateParityError(f"{path}: no tokenizer.chat_template: llama.cpp would prompt "
                                  "the model without the template it trained with")
    tokens = value("tokenizer.ggml.tokens")
    bos_id, eos_id = value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.eos_token_id")
    return GGUFChat(template, tokens[bos_id] if bos_id is not None else None,
                    tokens[eos_id] if eos_id is not None else None, bos_id,
                    bool(value("tokenizer.ggml.add_bos_token")))


def conversations(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """The probes, then each check row's prompt and its answer (named by the row's id)."""
    out = dict(PROBES)
    for row in rows:
        messages = [{"role": m["role"], "content": m["content"]}
                    for m in row["prompt"] + row["completion"]]
        out[f"row {row['id'][:12]}"] = messages
    return out


# ---- Ollama ---------------------------------------------------------------------------------

def modelfile_template(text: str) -> str:
    return re.search(r'^TEMPLATE """(.*?)"""$', text, re.DOTALL | re.MULTILINE)[1]


def ollama_values(modelfile_text: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    """The template's data as Ollama's chat endpoint builds it (server/routes.go and
    template/template.go): the Modelfile's SYSTEM first when no system message leads,
    consecutive messages of one role joined by a blank line, .System all system messages."""
    system = re.search(r'^SYSTEM """(.*?)"""$', modelfile_text, re.DOTALL | re.MULTILINE)
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system[1]}, *messages]
    collated: list[dict[str, str]] = []
    for message in messages:
        if collated and collated[-1]["Role"] == message["role"]:
            collated[-1]["Content"] += "\n\n" + message["content"]
        else:
            collated.append({"Role": message["role"], "Content": message["content"]})
    joined = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return {"System": joined, "Messages": collated, "Prompt": "", "Response": ""}


@functools.cache
def go_renderer() -> Path | None:
    """The renderer built from GO_SOURCE (once per process), or None without `go` on PATH."""
    go = shutil.which("go")
    if go is None:
        if os.environ.get(REQUIRE_GO) == "1":
            raise TemplateParityError(f"{REQUIRE_GO}=1 but `go` is not on PATH (Debian: "
                                      "apt-get install golang-go)")
        return None
    out = Path(tempfile.mkdtemp(prefix="pedigree-go-")) / "render"
    env = {**os.environ, "GO111MODULE": "off", "CGO_ENABLED": "0",
           "GOCACHE": os.environ.get("GOCACHE") or str(out.parent / "cache")}
    proc = subprocess.run([go, "build", "-o", str(out), str(GO_SOURCE)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode:
        raise TemplateParityError(f"go build {GO_SOURCE} failed: {proc.stderr.strip()}")
    return out


def render_go(template: str, values: list[dict[str, Any]]) -> list[str]:
    """Each entry of `values` rendered through `template` by Go's text/template."""
    renderer = go_renderer()
    if renderer is None:
        raise TemplateParityError("`go` is not on PATH")
    proc = subprocess.run([str(renderer)], input=json.dumps({"template": template,
                                                            "values": values}),
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode:
        raise TemplateParityError(f"Go's text/template refused the Modelfile TEMPLATE: "
                                  f"{proc.stderr.strip()}")
    return json.loads(proc.stdout)


# ---- the comparison -------------------------------------------------------------------------

def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _as_llama_cpp(tokenizer, chat: GGUFChat, text: str) -> list[int]:
    """The ids llama.cpp feeds the model for a rendered prompt: BOS added where the file says,
    a leading BOS text dropped so that it is not there twice."""
    if not chat.add_bos:
        return _encode(tokenizer, text)
    if chat.bos and text.startswith(chat.bos):
        text = text[len(chat.bos):]
    return [chat.bos_id, *_encode(tokenizer, text)]


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_template_parity(tokenizer, gguf_path: Path, modelfile_text: str | None,
                          rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every conversation through transformers, the GGUF's embedded template and (with Go and a
    Modelfile) the Modelfile's TEMPLATE, compared as token ids. Returns the figures; raises
    TemplateParityError at the first conversation whose ids differ."""
    from transformers.utils.chat_template_utils import render_jinja_template

    chat = gguf_chat(gguf_path)
    convs = conversations(rows)
    go = modelfile_text is not None and go_renderer() is not None
    go_texts = iter(render_go(modelfile_template(modelfile_text),
                              [ollama_values(modelfile_text, m) for m in convs.values()])
                    if go else [])
    compared = 0
    for name, messages in convs.items():
        open_prompt = messages[-1]["role"] != "assistant"
        trained = list(tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=open_prompt, return_dict=True,
        )["input_ids"])
        embedded = render_jinja_template(
            [messages], chat_template=chat.template, add_generation_prompt=open_prompt,
            bos_token=chat.bos or "", eos_token=chat.eos or "")[0][0]
        pairs = [("the GGUF's embedded template (llama.cpp)", trained,
                  _as_llama_cpp(tokenizer, chat, embedded))]
        if go:
            # Ollama leaves a final answer open: training's rendering continuing that message
            continued = trained if open_prompt else list(tokenizer.apply_chat_template(
                messages, tokenize=True, continue_final_message=True, return_dict=True,
            )["input_ids"])
            pairs.append(("the Modelfile TEMPLATE (Ollama, Go text/template)", continued,
                          _as_llama_cpp(tokenizer, chat, next(go_texts))))
        for runtime, want, got in pairs:
            if want != got:
                at = _first_difference(want, got)
                raise TemplateParityError(
                    f"{gguf_path.parent.name}: conversation {name!r} "
                    f"({'with' if open_prompt else 'without'} the generation prompt) gives the "
                    f"model other tokens through {runtime} than through transformers, from token "
                    f"{at}: {tokenizer.decode(got[at:at + 8])!r} where training has "
                    f"{tokenizer.decode(want[at:at + 8])!r}")
            compared += 1
    return {"conversations": len(convs), "comparisons": compared, "passed": True,
            "runtimes": ["transformers", "gguf-embedded"] + (["ollama-go"] if go else []),
            "ollama": ("Go text/template" if go else
                       "not checked: no Modelfile" if modelfile_text is None else
                       "not checked: `go` not on PATH")}
