"""HTTP service over a DemoSelector (FastAPI + uvicorn): POST /select, POST /examples, GET /health.

The endpoints call the same public API as the library (DemoSelector.select / add_examples) and speak the JSON
schema of the pydantic models below (GET /openapi.json). Safe by default: POST /examples needs the API key (without
one, writes are refused unless the app is made with allow_open_writes=True); POST /select is open unless an API key
or a separate read key is set (either then works for it); a Host header outside `allowed_hosts` (the localhost names
by default) gets 400, so a web page cannot reach a local server through DNS rebinding. Bad input gets a 4xx with a
`detail` message: 401 without a key that is needed, 403 with a wrong one (or for a write the server does not take),
413 for a body, text or batch over the
limits, 422 for malformed JSON, wrong types, empty text, unknown strategies, k out of range and a max_tokens budget
below 1 or too small for one demonstration. Malformed JSON is refused before the key is checked; everything else is
checked after it.

Concurrent selects are batched (`create_app(..., batching=True)`, what `ricl serve` runs): each request thread queues
its query with a RequestBatcher and waits; one worker thread takes every query queued meanwhile, embeds them all in
one encoder call and answers those with the same k, strategy and max_tokens with one DemoSelector.select_many (one
search). A query that fails fails only its own request, with the message it gets alone. No fit runs on a request's
time: an add refits the fitted strategies on the grown pool while selects go on, then swaps pool and fits in at
once; a strategy not yet fitted for a request's k (kmeans and votek rank the pool once per k) answers 503 with
Retry-After while a background thread fits it (DemoSelector).

GET /docs (Swagger UI) and GET /redoc render the schema from files the service serves itself (docs_page.py): they
work without internet.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hmac
import json
import logging
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Literal, NamedTuple, Sequence

from fastapi import Depends, FastAPI, HTTPException, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..errors import NotFittedYetError, RiclError, StaleIndexError
from ..lm.models import DEFAULT_MODEL
from ..retrieval.sentence_encoder import Encoder
from ..selectors.base import SELECTORS
from .demo_selector import DemoSelector, SelectedExample
from .docs_page import add_docs
from .request_batcher import RequestBatcher, grouped

log = logging.getLogger(__name__)
API_KEY_HEADER = "X-API-Key"
MAX_SELECT_BATCH = 64  # queries per batch: bounds one batch's time, so a burst is answered in a few rounds


class Limits(BaseModel):
    """What one request may ask for; larger requests are refused with 413 (size) or 422 (k)."""

    model_config = ConfigDict(extra="forbid")
    max_k: int = Field(64, gt=0, description="Largest k a select may ask for.")
    max_text_chars: int = Field(4000, gt=0, description="Longest query or example text, per field, in characters.")
    max_batch: int = Field(256, gt=0, description="Most examples one POST /examples may add.")
    max_body_bytes: int = Field(1_000_000, gt=0, description="Largest request body in bytes.")
    request_seconds: float = Field(30.0, gt=0, description="A select waiting longer than this answers 503.")


class SelectRequest(BaseModel):
    """A query given as `text` or as `fields` (one text per text field of the index), k and a strategy."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, description="The query text (for two-field tasks, the fields joined by a newline).")
    fields: dict[str, str] | None = Field(None, description="The query's text fields by name, instead of text.")
    k: StrictInt = Field(4, ge=1, description="How many demonstrations.")
    strategy: str | None = Field(None, description="A registered selector name; default: the server's strategy.")
    max_tokens: StrictInt | None = Field(
        None, ge=1, description="Token budget of the rendered prompt (the index's task template, the query included, "
        "counted with the server's tokenizer): of the k, the most similar demonstrations that fit, whole.")

    @model_validator(mode="after")
    def _one_query(self) -> "SelectRequest":
        if (self.text is None) == (self.fields is None):
            raise ValueError("give exactly one of text or fields")
        return self


class ExampleOut(BaseModel):
    """One selected demonstration."""

    id: int
    fields: dict[str, str]
    label: int
    label_name: str | None
    score: float = Field(description="Cosine similarity to the query, for every strategy.")


class SelectResponse(BaseModel):
    """The demonstrations in prompt order (by default the most similar last, next to the query)."""

    strategy: str
    k: int
    examples: list[ExampleOut]
    prompt_tokens: int | None = Field(
        None, description="Tokens of the rendered prompt with these examples and the query, when max_tokens was given.")


class NewExample(BaseModel):
    """An example to add: its text fields (or one string for one-field indexes) and its label id or name."""

    model_config = ConfigDict(extra="forbid")
    fields: dict[str, str] | str
    label: StrictInt | str


class AddRequest(BaseModel):
    """Examples to add; they are saved to the index directory before the response is sent."""

    model_config = ConfigDict(extra="forbid")
    examples: list[NewExample] = Field(min_length=1)


class AddResponse(BaseModel):
    """The new examples' ids and the pool size after adding them."""

    ids: list[int]
    count: int


class Health(BaseModel):
    """What the server holds and accepts."""

    status: Literal["ok"]
    count: int
    encoder: str
    text_fields: list[str]
    label_names: list[str] | None
    default_strategy: str
    strategies: list[str]
    auth: bool = Field(description=f"Whether POST /select needs the {API_KEY_HEADER} header.")
    writes: Literal["key", "open", "off"] = Field(description="POST /examples: with the API key, open to anyone "
                                                  "(allow_open_writes), or refused (no key set).")
    limits: Limits


class ErrorOut(BaseModel):
    """A refused request."""

    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 403, 409, 413, 422, 503, 507)}


class BodyLimit:
    """ASGI middleware: read the whole body first and answer 413 once it passes `max_bytes`."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
            if size > self.max_bytes:
                return await error_response(413, f"request body is over {self.max_bytes} bytes")(scope, receive, send)
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> dict:
            # The body once, then the real channel (which reports a disconnect) for anyone listening further.
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")  # Host headers of a loopback-bound server
# Served unless the server says otherwise: each fits in O(pool) or less. kmeans, votek (O(pool^2)), mdl (runs an LM)
# and the rest are served only when named at start-up, and are then fitted before the first request.
SERVED_STRATEGIES = ("knn", "random", "mmr", "bm25", "balanced")


def _key_check(keys: Sequence[str], open_when_none: bool = True):
    """A dependency that lets a request through with one of `keys` in X-API-Key; with no keys, every request
    (open_when_none) or none (403)."""
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)

    def check(given: str | None = Security(header)) -> None:
        if not keys:
            if open_when_none:
                return
            raise HTTPException(403, "this server takes no writes: start it with an API key (RICL_API_KEY) or, "
                                "on a trusted network, --allow-open-writes")
        if given is None:
            raise HTTPException(401, f"missing {API_KEY_HEADER} header", headers={"WWW-Authenticate": "ApiKey"})
        if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
            raise HTTPException(403, f"wrong {API_KEY_HEADER}")

    return check


def shown_encoder(name: str) -> str:
    """The encoder's name for /health: a hub id as it is, a local folder by its last part only (no paths)."""
    return Path(name).name if Path(name).is_absolute() or Path(name).exists() else name


def _check_size(texts: list[str], limits: Limits) -> None:
    longest = max((len(t) for t in texts), default=0)
    if longest > limits.max_text_chars:
        raise HTTPException(413, f"a text has {longest} characters; the limit is {limits.max_text_chars}")


class SelectItem(NamedTuple):
    """One select as the batcher queues it; requests with equal (k, strategy, max_tokens) are answered together."""

    query: str | dict[str, str]
    k: int
    strategy: str
    max_tokens: int | None


def select_batch(selector: DemoSelector, items: list[SelectItem]) -> list[list[SelectedExample]]:
    """Selects answered together: one encoder call for every query, one select_many per (k, strategy, max_tokens)."""
    vectors = selector.embed([item.query for item in items])  # (n, d)
    results: list[list[SelectedExample]] = [[] for _ in items]
    for (k, strategy, max_tokens), rows in grouped(items, lambda item: item[1:]).items():
        chosen = selector.select_many([items[r].query for r in rows], k, strategy, max_tokens, vectors[rows])
        for row, examples in zip(rows, chosen):
            results[row] = examples
    return results


def _batching_lifespan(selector: DemoSelector):
    """Runs a RequestBatcher of selects for as long as the app is up (app.state.batcher)."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with RequestBatcher(partial(select_batch, selector), max_batch=MAX_SELECT_BATCH) as batcher:
            app.state.batcher = batcher
            yield

    return lifespan


def _batched(http: Request, item: SelectItem, seconds: float) -> list[SelectedExample]:
    batcher = getattr(http.app.state, "batcher", None)
    if batcher is None:
        raise RuntimeError("batching is on but the app's lifespan has not started its batcher; serve the app with "
                           "uvicorn (or enter `with TestClient(app)`), or create_app(..., batching=False)")
    try:
        return batcher.submit(item).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise HTTPException(503, f"the server is busy: no answer within {seconds:g} s; retry later",
                            headers={"Retry-After": "1"}) from None


def create_app(selector: DemoSelector, api_key: str | None = None, limits: Limits | None = None,
               batching: bool = True, read_key: str | None = None, allow_open_writes: bool = False,
               allowed_hosts: Sequence[str] = LOCAL_HOSTS, strategies: Sequence[str] = SERVED_STRATEGIES) -> FastAPI:
    """The FastAPI app serving one DemoSelector. `api_key` is needed for POST /examples (no key: writes refused,
    unless allow_open_writes) and, when set, for POST /select, which also takes `read_key`. Requests whose Host is
    not in `allowed_hosts` ("*": any) get 400. Only `strategies` (and the selector's default) are served: another
    named in a request gets 422, so no request makes the server fit an expensive one while others wait. With
    `batching`, concurrent selects are answered together (see the module docstring); without, each request selects
    alone; a select waiting over limits.request_seconds gets 503."""
    limits = limits or Limits()
    served = sorted({selector.strategy, *strategies})
    unknown = [name for name in served if name not in SELECTORS]
    if unknown:
        raise RiclError(f"unknown strategies to serve: {unknown}; known: {sorted(SELECTORS)}")
    selector.warm_up(served)  # fitted now, not on a request's time (kmeans and votek still rank per k: 503 first)
    read_keys = [k for k in (api_key, read_key) if k]
    app = FastAPI(title="retrieval-icl", summary="Demonstration selection for in-context learning.", version="1",
                  lifespan=_batching_lifespan(selector) if batching else None,
                  docs_url=None, redoc_url=None)  # FastAPI's pages load from a CDN; add_docs serves them offline
    add_docs(app)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    guarded = [Depends(_key_check(read_keys))]
    write_guard = [Depends(_key_check([api_key] if api_key else [], open_when_none=allow_open_writes))]
    writes = "key" if api_key else "open" if allow_open_writes else "off"

    @app.exception_handler(RiclError)
    async def bad_input(request: Request, error: RiclError) -> Response:
        return error_response(422, str(error))

    @app.exception_handler(NotFittedYetError)
    async def not_fitted_yet(request: Request, error: NotFittedYetError) -> Response:
        return error_response(503, str(error), {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        # One readable line, without FastAPI's echo of the input (which may be large, or not encodable).
        return error_response(422, "; ".join(_describe(e) for e in error.errors()))

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", count=len(selector), encoder=shown_encoder(selector.index.encoder.name),
                      text_fields=selector.text_fields, label_names=selector.label_names,
                      default_strategy=selector.strategy, strategies=served, auth=bool(read_keys),
                      writes=writes, limits=limits)

    @app.post("/select", response_model=SelectResponse, dependencies=guarded, responses=ERRORS)
    def select(request: SelectRequest, http: Request) -> SelectResponse:
        """k demonstrations for one query."""
        _check_size([request.text] if request.text is not None else list(request.fields.values()), limits)
        if request.k > limits.max_k:
            raise HTTPException(422, f"k={request.k} is over this server's limit of {limits.max_k}")
        strategy = request.strategy or selector.strategy
        if strategy not in served:
            raise HTTPException(422, f"strategy {strategy!r} is not served here; served: {served}")
        if request.k > len(selector):
            raise HTTPException(422, f"k={request.k} is more than the {len(selector)} examples in the index")
        selector.require_fitted(strategy, request.k)  # a fit never runs on a request's time: 503, fitted meanwhile
        query = request.text if request.text is not None else request.fields
        item = SelectItem(query, request.k, strategy, request.max_tokens)
        if batching:
            # Checked before queueing: a bad request then fails alone, not sending its batch down the one-by-one path.
            selector.query_text(query)
        chosen = _batched(http, item, limits.request_seconds) if batching else selector.select(*item)
        tokens = selector.prompt_tokens(query, chosen) if request.max_tokens is not None else None
        return SelectResponse(strategy=strategy, k=request.k, examples=[ExampleOut(**c.to_dict()) for c in chosen],
                              prompt_tokens=tokens)

    @app.post("/examples", response_model=AddResponse, status_code=201, dependencies=write_guard, responses=ERRORS)
    def add_examples(request: AddRequest) -> AddResponse:
        """Add labelled examples; saved atomically and visible to the next select."""
        if len(request.examples) > limits.max_batch:
            raise HTTPException(413, f"{len(request.examples)} examples in one request; "
                                f"the limit is {limits.max_batch}")
        _check_size([t for ex in request.examples for t in _texts(ex.fields)], limits)
        try:
            ids = selector.add_examples([ex.model_dump() for ex in request.examples], save=True)
        except StaleIndexError as e:  # another process saved the index since this server loaded it
            raise HTTPException(409, f"the examples were not added: {e}") from None
        except OSError as e:  # nothing was added: the client may retry
            log.error("could not save the index after an add: %s", e)
            status, why = (507, "the disk is full") if e.errno == errno.ENOSPC else (503, "the disk write failed")
            raise HTTPException(status, f"the examples were not added: {why}; retry later") from None
        return AddResponse(ids=ids, count=len(selector))

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    return app


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    """{"detail": ...} as ASCII JSON: a message may quote input with lone surrogates, which UTF-8 cannot encode."""
    return Response(json.dumps({"detail": detail}, ensure_ascii=True), status_code=status,
                    media_type="application/json", headers=headers)


def _describe(error: dict) -> str:
    if error["type"] == "json_invalid":
        return f"the body is not valid JSON (error at character {error['loc'][-1]}); expected a JSON object"
    where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
    return f"{where}: {error['msg']}"


def _texts(fields: dict[str, str] | str) -> list[str]:
    return [fields] if isinstance(fields, str) else list(fields.values())


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, strategy: str = "knn", seed: int = 0,
          api_key: str | None = None, limits: Limits | None = None, log_level: str = "warning",
          tokenizer: str = DEFAULT_MODEL, batching: bool = True, read_key: str | None = None,
          allow_open_writes: bool = False, allowed_hosts: Sequence[str] | None = None,
          encoder: Encoder | None = None, strategies: Sequence[str] = SERVED_STRATEGIES) -> None:
    """Load the index, warm the encoder and serve until interrupted (one process: the pool lives in memory).
    `tokenizer` (a model name) counts max_tokens budgets; it is loaded on the first request with one. `batching`
    answers concurrent selects together (create_app); then numpy's BLAS runs on one thread: a batch's search
    products are small, and idle BLAS threads spin on the cores the encoder needs (benchmarks/service_load.py: 47 ->
    64 requests/s with the onnx backend on 2 cores). `allowed_hosts` defaults to the localhost names on a loopback
    bind and to the bound address otherwise."""
    import uvicorn
    from threadpoolctl import threadpool_limits

    if batching:
        threadpool_limits(1, user_api="blas")
    # Everything a request could make the worker load or fit is done now: the tokenizer here, the strategies in
    # create_app.
    selector = DemoSelector.load(index_dir, strategy=strategy, seed=seed, tokenizer=tokenizer, encoder=encoder,
                                 background_fits=True).warm_up(tokenizer=True)
    hosts = allowed_hosts or (LOCAL_HOSTS if host in LOCAL_HOSTS else (host,))
    app = create_app(selector, api_key=api_key, limits=limits, batching=batching, read_key=read_key,
                     allow_open_writes=allow_open_writes, allowed_hosts=hosts, strategies=strategies)
    if allow_open_writes and api_key is None:
        log.warning("serving with open writes: anyone who can reach %s can add examples to %s", host, index_dir)
    print(f"serving {len(selector)} examples from {index_dir} on http://{host}:{port} (docs at /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
