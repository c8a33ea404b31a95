"""A generator that asks an OpenAI-compatible server (vLLM, SGLang, ...) the user runs, instead of a model in-process.

    vllm serve Qwen/Qwen2.5-VL-72B-Instruct --port 8000 --limit-mm-per-prompt '{"image": 2}'
    vision-opd eval --backend openai --api-base http://127.0.0.1:8000/v1 --api-model Qwen/Qwen2.5-VL-72B-Instruct \
        --model Qwen/Qwen2.5-VL-72B-Instruct --benchmark vstar --data /data/vstar --out runs/eval/72b

Each prompt is one POST {api_base}/chat/completions: a user message with every image as a base64 PNG
data URL followed by the text, `temperature` 0, `max_tokens` = max_new_tokens. The pixel budget goes
as vLLM's `mm_processor_kwargs` and thinking mode as `chat_template_kwargs` (servers that do not know
them ignore them). A batch's prompts are sent concurrently; the server batches them. An API key, if the
server wants one, is read from the environment variable named by `api_key_env` (default OPENAI_API_KEY).
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from ..data.views import View
from .run import EvalError, Generation


def data_url(image) -> str:
    """A PIL image as a `data:image/png;base64,...` URL (PNG: lossless, so the server sees our pixels)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIGenerator:
    """generate(views) -> list[Generation] through POST /v1/chat/completions, greedy (temperature 0)."""

    def __init__(self, api_base: str, model: str, *, max_new_tokens: int = 32, min_pixels: int | None = None,
                 max_pixels: int | None = None, enable_thinking: bool | None = None, timeout: float = 600.0,
                 concurrency: int = 8, retries: int = 2, api_key_env: str = "OPENAI_API_KEY"):
        if not api_base.startswith(("http://", "https://")):
            raise EvalError(f"--api-base {api_base!r} must be an http(s) URL such as http://127.0.0.1:8000/v1")
        self.url = api_base.rstrip("/") + "/chat/completions"
        self.api_base, self.model = api_base.rstrip("/"), model
        self.max_new_tokens, self.enable_thinking = max_new_tokens, enable_thinking
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.timeout, self.concurrency, self.retries = timeout, max(1, concurrency), retries
        self.api_key = os.environ.get(api_key_env) or None

    def body(self, view: View) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in view.images]
        content.append({"type": "text", "text": view.text})
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": content}],
                                "temperature": 0, "max_tokens": self.max_new_tokens, "n": 1}
        mm = {k: v for k, v in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels)) if v}
        if mm:
            body["mm_processor_kwargs"] = mm
        if self.enable_thinking is not None:
            body["chat_template_kwargs"] = {"enable_thinking": self.enable_thinking}
        return body

    def _post(self, view: View) -> Generation:
        data = json.dumps(self.body(view)).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        t0 = time.perf_counter()
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    reply = json.loads(resp.read().decode("utf-8"))
                break
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:500]
                if e.code < 500 or attempt == self.retries:
                    raise EvalError(f"{self.url} answered HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.retries:
                    raise EvalError(f"cannot reach {self.url} ({e}); is the server running? check --api-base") from None
            time.sleep(min(30.0, 2.0 ** attempt))
        try:
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError):
            raise EvalError(f"{self.url}: unexpected reply (no choices[0].message): {str(reply)[:300]}") from None
        reasoning = choice["message"].get("reasoning_content")
        if reasoning:  # servers with a reasoning parser split the thinking off: keep the raw shape
            text = f"<think>{reasoning}</think>{text}"
        tokens = (reply.get("usage") or {}).get("completion_tokens")
        return Generation(text, int(tokens) if tokens is not None else None, choice.get("finish_reason") == "length",
                          time.perf_counter() - t0)

    def __call__(self, views: Sequence[View]) -> list[Generation]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(views))) as pool:
            gens = list(pool.map(self._post, views))
        per_item = (time.perf_counter() - t0) / len(views)
        for g in gens:
            g.seconds = per_item  # wall time shared over the batch, as for the HF generator
        return gens

    def settings(self) -> dict[str, Any]:
        return {
            "backend": "openai",
            "model": self.model,
            "api_base": self.api_base,
            "pixel_budget": {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "note": "sent as mm_processor_kwargs; None = the server's default"},
            "decoding": {"greedy": True, "temperature": 0, "max_new_tokens": self.max_new_tokens},
            "enable_thinking": self.enable_thinking,
            "image_encoding": "PNG data URL",
        }
