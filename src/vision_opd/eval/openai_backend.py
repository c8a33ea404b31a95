"""A generator that asks an OpenAI-compatible server (vLLM, SGLang, ...) the user runs, through the `openai` package.

    vllm serve Qwen/Qwen2.5-VL-72B-Instruct --port 8000 --limit-mm-per-prompt '{"image": 2}'
    vision-opd eval --backend openai --api-base http://127.0.0.1:8000/v1 --api-model Qwen/Qwen2.5-VL-72B-Instruct \
        --model Qwen/Qwen2.5-VL-72B-Instruct --benchmark vstar --data /data/vstar --out runs/eval/72b

Each prompt is one chat completion: a user message with every image as a base64 PNG data URL followed by the text,
`max_tokens` = the response budget, and the whole greedy decoding spelled out (`GREEDY`: temperature 0, top_p 1, no
penalties, and top_k -1, min_p 0, repetition_penalty 1 as vLLM's extra sampling parameters): a server fills any
setting a request leaves out from the checkpoint's generation_config (`vllm serve` does: an instruct checkpoint's
repetition_penalty 1.05, top_k, top_p), so a request with only `temperature` 0 is not plain greedy decoding. The
pixel budget goes as vLLM's `mm_processor_kwargs` and thinking mode as `chat_template_kwargs` (servers that do not
know them ignore them). A batch's prompts are sent concurrently; the server batches them. The client (`client`) has
a timeout and retries with exponential backoff (connection errors, timeouts, 408/409/429 and 5xx); a request that
still fails is recorded as `request_failed` with its error, and a rerun asks only those again. A rejected key (401/403) or an unknown model (404) stops the run
with one line, before any item when the server can be asked first (`check_server`). The API key is read from the
environment variable named by `api_key_env` (default OPENAI_API_KEY) and never written to any output.
"""

from __future__ import annotations

import base64
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from ..data.views import View
from .samples import Generation
from .thinking import as_thought
from .views import EvalError

NO_KEY = "EMPTY"  # sent when the environment has no key (local vLLM servers accept any)
# plain greedy decoding, every setting sent: the OpenAI parameters, then vLLM's extra sampling parameters (sent in the
# request body; vLLM's defaults for them otherwise come from the checkpoint's generation_config)
GREEDY = {"temperature": 0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
GREEDY_EXTRA = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}


def _openai():
    try:
        import openai
    except ImportError:
        raise EvalError("the openai backend and the LLM judge need the openai package: "
                        "pip install 'vision-opd[serve]'") from None
    return openai


@dataclass(frozen=True)
class Connection:
    """How to reach an OpenAI-compatible server: the key's environment variable, the request timeout, retries."""
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 600.0
    retries: int = 2


def client(api_base: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 600.0, retries: int = 2, what: str):
    """An `openai.OpenAI` client for an OpenAI-compatible server; `what` names the flag in error messages."""
    openai = _openai()
    if not api_base.startswith(("http://", "https://")):
        raise EvalError(f"{what} {api_base!r} must be an http(s) URL such as http://127.0.0.1:8000/v1")
    return openai.OpenAI(base_url=api_base.rstrip("/"), api_key=os.environ.get(api_key_env) or NO_KEY,
                         timeout=timeout, max_retries=retries)


def fatal_status(e: Exception) -> bool:
    """A server answer that no retry and no other item will change: a rejected key, an unknown model or route."""
    openai = _openai()
    return isinstance(e, (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError))


def describe(e: Exception) -> str:
    status = getattr(e, "status_code", None)
    return f"{type(e).__name__}" + (f" (HTTP {status})" if status else "") + f": {str(e)[:300]}"


def check_server(c, model: str, what: str, api_key_env: str) -> dict[str, Any]:
    """Ask the server which models it serves before any item: an unreachable server, a rejected key or a model it
    does not serve is one clear line. A server without a /models route is not checked."""
    openai = _openai()
    try:
        served = [m.id for m in c.with_options(max_retries=1).models.list()]
    except openai.APIConnectionError as e:
        raise EvalError(f"cannot reach {c.base_url} ({type(e).__name__}); is the server running? check {what}") from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise EvalError(f"{c.base_url} rejected the API key ({describe(e)}); set the environment variable "
                        f"{api_key_env}") from None
    except openai.APIStatusError:
        return {"served_models": None}
    if served and model not in served:
        raise EvalError(f"{c.base_url} does not serve the model {model!r} (it serves: {', '.join(served[:10])})")
    return {"served_models": served}


def data_url(image) -> str:
    """A PIL image as a `data:image/png;base64,...` URL (PNG: lossless, so the server sees our pixels)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIGenerator:
    """generate(views) -> list[Generation] through chat completions, greedy (temperature 0)."""

    def __init__(self, api_base: str, model: str, *, max_new_tokens: int = 32, min_pixels: int | None = None,
                 max_pixels: int | None = None, enable_thinking: bool | None = None, concurrency: int = 8,
                 connection: Connection = Connection(), check: bool = True):
        timeout, retries, api_key_env = connection.timeout, connection.retries, connection.api_key_env
        self.client = client(api_base, api_key_env=api_key_env, timeout=timeout, retries=retries, what="--api-base")
        self.api_base, self.model = api_base.rstrip("/"), model
        self.max_new_tokens, self.enable_thinking = max_new_tokens, enable_thinking
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.timeout, self.concurrency, self.retries, self.api_key_env = timeout, max(1, concurrency), retries, api_key_env
        self.server = check_server(self.client, model, "--api-base", api_key_env) if check else {}

    def request(self, view: View) -> dict[str, Any]:
        """The chat-completion arguments for one view."""
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in view.images]
        content.append({"type": "text", "text": view.text})
        extra: dict[str, Any] = dict(GREEDY_EXTRA)
        mm = {k: v for k, v in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels)) if v}
        if mm:
            extra["mm_processor_kwargs"] = mm
        if self.enable_thinking is not None:
            extra["chat_template_kwargs"] = {"enable_thinking": self.enable_thinking}
        return {"model": self.model, "messages": [{"role": "user", "content": content}], **GREEDY,
                "max_tokens": self.max_new_tokens, "n": 1, "extra_body": extra}

    def _one(self, view: View) -> Generation:
        openai = _openai()
        t0 = time.perf_counter()
        try:
            reply = self.client.chat.completions.create(**self.request(view))
            choice = reply.choices[0]
            text = choice.message.content or ""
        except openai.APIError as e:
            if fatal_status(e):
                raise EvalError(f"{self.api_base} refused the request ({describe(e)}); check --api-model and the key "
                                f"in {self.api_key_env}") from None
            return Generation("", None, False, time.perf_counter() - t0, error=describe(e))
        except (IndexError, AttributeError, TypeError) as e:
            return Generation("", None, False, time.perf_counter() - t0, error=f"unexpected reply: {e}")
        truncated = choice.finish_reason == "length"
        extra = choice.message.model_extra or {}
        reasoning = extra.get("reasoning_content") or extra.get("reasoning")
        if reasoning:  # a server with a reasoning parser split the thinking off: keep the raw shape
            closed = bool(text) or not truncated  # cut inside the thought: leave it open
            text = f"<think>{reasoning}" + ("</think>" if closed else "") + text
        text = as_thought(text, bool(self.enable_thinking) and truncated)  # cut with no tag: inside the thought
        tokens = reply.usage.completion_tokens if reply.usage is not None else None
        return Generation(text, int(tokens) if tokens is not None else None, truncated, time.perf_counter() - t0)

    def __call__(self, views: Sequence[View]) -> list[Generation]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(views))) as pool:
            gens = list(pool.map(self._one, views))
        per_item = (time.perf_counter() - t0) / len(views)
        for g in gens:
            g.seconds = per_item  # wall time shared over the batch, as for the HF generator
        return gens

    def settings(self) -> dict[str, Any]:
        return {
            "backend": "openai",
            "model": self.model,
            "api_base": self.api_base,
            "pixel_budget": {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
                             "note": "sent as mm_processor_kwargs; None = the server's default"},
            "decoding": {"greedy": True, **GREEDY, **GREEDY_EXTRA, "max_new_tokens": self.max_new_tokens,
                         "sent": "every setting above, so the server's generation_config defaults do not apply"},
            "enable_thinking": self.enable_thinking,
            "image_encoding": "PNG data URL",
        }

    def client_settings(self) -> dict[str, Any]:
        """How the server is asked (not compared on resume: it does not change an answer)."""
        return {"package": "openai", "timeout_s": self.timeout, "retries": self.retries, "api_key_env": self.api_key_env}
