"""A minimal OpenAI-compatible chat completions server on 127.0.0.1 for the judge's tests: it
answers with a scripted function of the prompt, or greedily with a model of ours through its chat
template (what llama-server or vLLM would do with it). It records every request's body and
Authorization header."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Answer = Callable[[str, int], str]  # (the user message, max_tokens) -> the reply's text


def model_answer(model_dir: Path) -> Answer:
    """Greedy answers of a local model through its chat template."""
    from pedigree.model.load import load_causal_lm, load_tokenizer
    from pedigree.model.measure import greedy_answers

    model, tokenizer = load_causal_lm(model_dir), load_tokenizer(model_dir)
    lock = threading.Lock()  # one generation at a time

    def answer(prompt: str, max_tokens: int) -> str:
        with lock:
            return greedy_answers(model, tokenizer, [[{"role": "user", "content": prompt}]],
                                  max_tokens, 1)[0]

    return answer


@contextmanager
def serve(answer: Answer, path: str = "/v1/chat/completions") -> Iterator[dict[str, Any]]:
    """{"url": the API root, "requests": [{"body", "authorization"}]} while the server runs."""
    state: dict[str, Any] = {"requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append({"body": body,
                                      "authorization": self.headers.get("Authorization")})
            if self.path != path:
                self.send_error(404, "no such route")
                return
            text = answer(body["messages"][-1]["content"], body.get("max_tokens", 16))
            reply = json.dumps({"object": "chat.completion", "model": body["model"], "choices": [
                {"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
