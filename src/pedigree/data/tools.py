"""Whether the base model's chat template renders tool calls and tool results.

A row whose tool calls the template drops would train the model on answers to calls it never
sees, so such rows are rejected with the reason. Found by rendering one probe conversation that
carries marker strings and looking for the markers; probed once, and only when a row has tools
(it needs transformers' template renderer, slow to import).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from pedigree.data_layouts import MESSAGE_FIELDS

_CALL, _RESULT = "pedigree_probe_call", "pedigree_probe_result"


class ToolSupport:
    def __init__(self, tokenizer_dir: str | Path):
        self.dir = Path(tokenizer_dir)
        self.why: dict[str, str] = {}  # the template's own error, where a probe raised one

    def problem(self, content: dict[str, Any]) -> tuple[str, str] | None:
        """(reason, detail) when a message of `content` holds what the template cannot
        render; None otherwise (and for rows without tools, without probing)."""
        messages = [m for field, turns in content.items() if field in MESSAGE_FIELDS
                    for m in turns]
        if any("tool_calls" in m for m in messages) and not self.renders["tool_calls"]:
            return ("tool_calls_not_rendered", (f"the chat template of {self.dir} does not "
                    "render assistant tool_calls: the model would not see its own calls"
                    + self._why("tool_calls")))
        if any(m["role"] == "tool" for m in messages) and not self.renders["tool"]:
            return ("tool_role_not_rendered", (f"the chat template of {self.dir} does not "
                    "render tool turns (tool results)" + self._why("tool")))
        return None

    def _why(self, name: str) -> str:
        return f" (it raised: {self.why[name]})" if name in self.why else ""

    @cached_property
    def renders(self) -> dict[str, bool]:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.dir)
        # Ids as Mistral's templates demand them (9 letters and digits); others ignore them.
        call = {"id": "abcDEF123", "type": "function",
                "function": {"name": _CALL, "arguments": {"x": 1}}}
        probe = [{"role": "user", "content": "q"},
                 {"role": "assistant", "content": "", "tool_calls": [call]},
                 {"role": "tool", "content": _RESULT, "tool_call_id": "abcDEF123"},
                 {"role": "assistant", "content": "a"}]
        try:
            text = tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception as err:  # noqa: BLE001 - a template may raise on anything it refuses
            text = ""
            self.why = dict.fromkeys(("tool_calls", "tool"), str(err)[:200])
        return {"tool_calls": _CALL in text, "tool": _RESULT in text}
