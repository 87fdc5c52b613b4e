"""Per-request checks vLLM 0.11 does not make (the platform's ``validate_request`` hook).

A ValueError raised here becomes a 400 with its message (one line), before the request
reaches the engine process.

- vLLM rejects ``temperature < 0`` but lets NaN/inf through (``nan < 0`` is False); the
  sampler then divides the logits by NaN and returns garbage with HTTP 200 (issue 8).
- vLLM bounds prompt token ids by ``max(tokenizer.max_token_id, vocab - 1)``, where
  ``max_token_id`` is ``max(largest id in the vocab, tokenizer.vocab_size)`` -- a count, so
  id == vocab size passes; it never checks ``< 0``. Either id reaches the embedding lookup
  in the engine process ("INDICES element is out of DATA bounds"), which kills the engine
  and ``vllm serve`` with it (issue 19). The real bound is the model's embedding rows,
  ``model_config.get_vocab_size()`` (= ``hf_text_config.vocab_size``; any padding rows
  vLLM adds past it hold no token).

``validate_request`` sees the prompt after vLLM's input preprocessing, so this covers token-id
prompts, text and chat prompts (already tokenized), multimodal prompts (placeholder
positions are replaced by embeddings and not looked up: skipped) and both halves of
encoder-decoder prompts; ``prompt_embeds`` prompts have no ids.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Optional

# Embedding rows of the model of the engine built last in this process (recorded by the
# platform's check_and_update_config, which runs in the process that owns the input
# processor). None: unknown, only negative ids are rejected.
_embedding_rows: Optional[int] = None

_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty")


# Integer sampling parameters end up in int64 tensors/arrays (top_k: int32); a bigger Python
# int fails in vLLM 0.11 with a 500 and an empty message (top_k=2**64).
_INT_FIELDS = {"n": 63, "best_of": 63, "top_k": 31, "max_tokens": 63, "min_tokens": 63,
               "seed": 63, "logprobs": 63, "prompt_logprobs": 63, "truncate_prompt_tokens": 63}
_INT_LIST_FIELDS = ("stop_token_ids", "allowed_token_ids")


def _int_problem(name: str, value, bits: int) -> Optional[str]:
    if isinstance(value, int) and not -(1 << bits) <= value < (1 << bits):
        return f"{name} must be in [{-(1 << bits)}, {(1 << bits) - 1}], got {value}"
    return None


def sampling_params_problem(params) -> Optional[str]:
    """Why these SamplingParams cannot be sampled with, or None (PoolingParams: None)."""
    for name, bits in _INT_FIELDS.items():
        problem = _int_problem(name, getattr(params, name, None), bits)
        if problem:
            return problem
    for name in _INT_LIST_FIELDS:
        for value in getattr(params, name, None) or ():
            problem = _int_problem(name, value, 63)
            if problem:
                return problem
    for name in _FLOAT_FIELDS:
        value = getattr(params, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
    bias = getattr(params, "logit_bias", None) or {}
    for token, value in bias.items():
        if not math.isfinite(float(value)):
            return f"logit_bias[{token}] must be a finite number, got {value}"
    return None


def remember_model(model_config) -> None:
    """Record the embedding-row count of the model being served (``None`` clears it)."""
    global _embedding_rows
    rows = model_config.get_vocab_size() if model_config is not None else 0
    _embedding_rows = rows if rows and rows > 0 else None
    remember_prompt_embeds(model_config)


def prompt_ids_problem(ids: Sequence[Any], rows: Optional[int],
                       skip: Iterable[Iterable[int]] = ()) -> Optional[str]:
    """Why ``ids`` cannot be looked up in an embedding of ``rows`` rows, or None.
    ``skip``: groups of positions that are not looked up (multimodal placeholders)."""
    skipped = {i for group in skip for i in group}
    if not skipped:  # the common case: two C-speed passes, then the slow one only to name it
        try:
            if min(ids) >= 0 and (rows is None or max(ids) < rows) and all(
                    type(t) is int for t in ids):
                return None
        except TypeError:
            pass
    for position, token in enumerate(ids):
        if position in skipped:
            continue
        if not isinstance(token, int) or isinstance(token, bool):
            return f"prompt token id at position {position} is not an integer: {token!r:.40}"
        if token < 0 or (rows is not None and token >= rows):
            bound = f"[0, {rows})" if rows is not None else ">= 0"
            return (f"prompt token id {token} at position {position} is out of range: "
                    f"ids must be in {bound} (the model's vocabulary)")
    return None


def _placeholder_positions(inputs: dict) -> list[list[int]]:
    groups = []
    for ranges in (inputs.get("mm_placeholders") or {}).values():
        for r in ranges:
            if r.is_embed is None:
                groups.append(list(range(r.offset, r.offset + r.length)))
            else:
                mask = r.is_embed.tolist()
                groups.append([r.offset + i for i, embedded in enumerate(mask) if embedded])
    return groups


def processed_inputs_problem(processed_inputs) -> Optional[str]:
    """Out-of-range prompt ids in vLLM's ProcessorInputs (any prompt kind), or None."""
    if not isinstance(processed_inputs, dict):
        return None
    if processed_inputs.get("type") == "embeds":
        return None
    if "encoder" in processed_inputs and "decoder" in processed_inputs:
        return (processed_inputs_problem(processed_inputs["encoder"])
                or processed_inputs_problem(processed_inputs["decoder"]))
    ids = processed_inputs.get("prompt_token_ids")
    if not ids:
        return None
    return prompt_ids_problem(ids, _embedding_rows, _placeholder_positions(processed_inputs))


# --------------------------------------------------------------------------- HTTP layer
#
# What validate_request cannot reach: vLLM 0.11 fails before it (in FastAPI's body parsing or
# in the serving layer) and answers 500, or puts server file paths in a 400 body. vLLM's
# supported ``--middleware`` option installs this ASGI middleware:
#
#     vllm serve MODEL --middleware vllm_xpu_plugin.request_checks.ClientErrorMiddleware
#
# - A JSON body that is not an object (array, string, number, null) -> 400 (vLLM: 500, its
#   request models' "before" validators call data.get()).
# - ``prompt_embeds`` while the server runs without --enable-prompt-embeds -> 400 (vLLM
#   0.11 checks the flag only after torch.load()ing the bytes: garbage -> 500).
# - 4xx JSON bodies lose the ' File "...", line N, in f' endpoint context that FastAPI
#   >= 0.1xx adds to str(RequestValidationError) and vLLM's handler copies into the message.
# Streaming and 2xx responses pass through untouched; only POST bodies with a JSON content
# type are buffered (FastAPI reads them whole anyway).

_prompt_embeds_enabled: Optional[bool] = None  # from the served model's config
# FastAPI's endpoint context: '\n  File "/x.py", line 5, in f' and then '\n    POST /path'.
_FILE_CONTEXT = re.compile(r'\s*File "[^"]*", line \d+, in [^\s\'"\\]+(\n    [A-Z]+ /\S*)?')
_JSON_KINDS = {"list": "array", "str": "string", "int": "number", "float": "number",
               "NoneType": "null", "bool": "boolean"}


def remember_prompt_embeds(model_config) -> None:
    global _prompt_embeds_enabled
    _prompt_embeds_enabled = (bool(getattr(model_config, "enable_prompt_embeds", False))
                              if model_config is not None else None)


def json_body_problem(body: bytes) -> Optional[str]:
    """Why this request body cannot be a vLLM request, or None (FastAPI judges the rest)."""
    head = body.lstrip()[:1]
    if head and head != b"{" and head[0] < 0x80:
        try:
            kind = _JSON_KINDS.get(type(json.loads(body)).__name__, "value")
        except ValueError:
            return None  # not JSON at all: FastAPI answers 400 itself
        return f"the request body must be a JSON object, got a JSON {kind}"
    if _prompt_embeds_enabled is False and b'"prompt_embeds"' in body:
        try:
            data = json.loads(body)
        except ValueError:
            return None
        if isinstance(data, dict) and data.get("prompt_embeds") is not None:
            return ("prompt_embeds are not enabled on this server "
                    "(start it with --enable-prompt-embeds)")
    return None


def scrub_error_body(body: bytes) -> bytes:
    """A 4xx JSON body without server file paths (unchanged if it has none)."""
    if b'File \\"' not in body and b'File "' not in body:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        error["message"] = _FILE_CONTEXT.sub("", error["message"])
        return json.dumps(data).encode()
    return body


def _error_response(message: str) -> tuple[dict, dict]:
    body = json.dumps({"error": {"message": message, "type": "BadRequestError",
                                 "param": None, "code": 400}}).encode()
    start = {"type": "http.response.start", "status": 400,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    return start, {"type": "http.response.body", "body": body}


class ClientErrorMiddleware:
    """ASGI middleware for ``vllm serve --middleware`` (see above)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        if scope.get("method") == "POST" and _is_json(scope):
            body, disconnected = await _read_body(receive)
            problem = None if disconnected else json_body_problem(body)
            if problem:
                start, message = _error_response(problem)
                await send(start)
                await send(message)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _scrubbing(send))


def _is_json(scope) -> bool:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return False


async def _read_body(receive) -> tuple[bytes, bool]:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the client's disconnect, if any

    return replay


def _scrubbing(send):
    state: dict = {}

    async def scrubbing_send(message):
        if message["type"] == "http.response.start":
            headers = dict((k.lower(), v) for k, v in message.get("headers") or ())
            if 400 <= message["status"] < 500 and headers.get(
                    b"content-type", b"").startswith(b"application/json"):
                state["start"], state["chunks"] = message, []
                return
            return await send(message)
        if "start" not in state or message["type"] != "http.response.body":
            return await send(message)
        state["chunks"].append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = scrub_error_body(b"".join(state["chunks"]))
        start = dict(state.pop("start"))
        start["headers"] = [(k, v) for k, v in start.get("headers") or ()
                            if k.lower() != b"content-length"]
        start["headers"].append((b"content-length", str(len(body)).encode()))
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return scrubbing_send


# --------------------------------------------------------------------------- logging
#
# vLLM 0.11's serving layer logs every rejected request with logger.exception (ERROR and a
# traceback) before answering 400: ~16 ERROR lines per bad request, which buries real
# errors. vLLM's supported VLLM_LOGGING_CONFIG_PATH can attach this filter to its handler
# (docs/reliability.md has the file): a client error becomes one WARNING line.

CLIENT_ERROR_TYPES = ("ValueError", "TypeError", "OverflowError", "ValidationError",
                      "TemplateError", "TemplateSyntaxError", "UndefinedError")


class ClientErrorLogFilter:
    """logging filter: ERROR records of ``vllm.entrypoints.*`` whose exception is a client
    error (a type of CLIENT_ERROR_TYPES, the ones vLLM answers 400) -> one WARNING line.
    Anything else (other loggers, other exception types, no exception) is left alone."""

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if (exc is not None and record.levelno >= 40
                and record.name.startswith("vllm.entrypoints")
                and type(exc).__name__ in CLIENT_ERROR_TYPES):
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            record.msg = f"{record.getMessage()} (client error, answered 4xx): " \
                         f"{type(exc).__name__}: {first_line}"
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = 30, "WARNING"
        return True
