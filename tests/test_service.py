"""The HTTP service: a real uvicorn server on a loopback port, called over HTTP with httpx."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from counting_encoder import counting_encoder
from fastapi import FastAPI

from retrieval_icl.data.tasks import load_examples, load_task
from retrieval_icl.errors import RiclError
from retrieval_icl.retrieval.index import DemoIndex
from retrieval_icl.retrieval.sentence_encoder import Encoder
from retrieval_icl.serving.demo_selector import DemoSelector
from retrieval_icl.serving.docs_page import add_docs
from retrieval_icl.serving.service import Limits, create_app

DATA = Path(__file__).resolve().parent / "data"  # hand-made: 40 train reviews
KEY = {"X-API-Key": "s3cret"}
LIMITS = Limits(max_k=40, max_text_chars=300, max_batch=4, max_body_bytes=20_000)


def build_index(directory: Path, encoder: Encoder, n: int = 30) -> None:
    task = load_task("sst2")
    examples = load_examples(task, "train", DATA)[:n]
    DemoIndex(encoder).build(examples, task=task.name, label_names=task.label_names,
                             text_fields=task.text_fields).save(directory)


def wait_until(ready, what: str, attempts: int = 600) -> None:
    """Poll `ready()` every 50 ms; fail (not hang) when it never becomes true."""
    for _ in range(attempts):
        if ready():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen")


@contextmanager
def running(app):
    """The base URL of a real uvicorn server for `app`, in a thread, on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from the start so nothing can take it
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "server start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """(base URL, the server's DemoSelector, its index dir) for a server with an API key and small limits."""
    root = tmp_path_factory.mktemp("service")
    encoder = Encoder(cache_dir=root / "emb")
    build_index(root / "index", encoder)
    selector = DemoSelector.load(root / "index", encoder=encoder).warm_up()
    with running(create_app(selector, api_key=KEY["X-API-Key"], limits=LIMITS)) as base:
        yield base, selector, root / "index"


@pytest.fixture(scope="module")
def client(service):
    with httpx.Client(base_url=service[0], timeout=30) as c:
        yield c


def test_health_and_openapi_schema(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["text_fields"] == ["sentence"] and health["auth"] is True
    assert health["label_names"] == ["negative", "positive"] and "mmr" in health["strategies"]
    assert health["limits"]["max_k"] == 40
    schema = client.get("/openapi.json").json()
    assert {"/select", "/examples", "/health"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["SelectRequest"]
    assert set(request["properties"]) == {"text", "fields", "k", "strategy", "max_tokens"}
    assert "prompt_tokens" in schema["components"]["schemas"]["SelectResponse"]["properties"]
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"


def test_select_matches_the_library(client, service):
    _, selector, _ = service
    for strategy in (None, "mmr", "bm25", "balanced"):
        body = {"text": "a gorgeous, witty film", "k": 3} | ({"strategy": strategy} if strategy else {})
        got = client.post("/select", json=body, headers=KEY)
        assert got.status_code == 200, got.text
        expected = [c.to_dict() for c in selector.select("a gorgeous, witty film", 3, strategy)]
        assert got.json() == {"strategy": strategy or "knn", "k": 3, "examples": expected, "prompt_tokens": None}
    by_fields = client.post("/select", json={"fields": {"sentence": "a gorgeous, witty film"}, "k": 3}, headers=KEY)
    assert by_fields.json()["examples"] == client.post("/select", json={"text": "a gorgeous, witty film", "k": 3},
                                                       headers=KEY).json()["examples"]


@pytest.mark.lm  # the packaged SmolLM2 tokenizer (no weights) counts the budget
def test_select_within_a_token_budget(client, service):
    _, selector, _ = service
    body = {"text": "a gorgeous, witty film", "k": 6}
    everything = client.post("/select", json=body, headers=KEY).json()
    budget = selector.prompt_tokens(body["text"], selector.select(body["text"], 6)) - 1
    got = client.post("/select", json=body | {"max_tokens": budget}, headers=KEY)
    assert got.status_code == 200, got.text
    kept = got.json()["examples"]
    assert 0 < len(kept) < 6 and kept == [e for e in everything["examples"] if e in kept]
    assert got.json()["prompt_tokens"] <= budget and got.json()["k"] == 6
    expected = selector.select(body["text"], 6, max_tokens=budget)
    assert kept == [c.to_dict() for c in expected]
    assert got.json()["prompt_tokens"] == selector.prompt_tokens(body["text"], expected)
    too_small = client.post("/select", json=body | {"max_tokens": 5}, headers=KEY)
    assert too_small.status_code == 422
    assert too_small.json()["detail"].startswith("max_tokens=5 leaves no room for a demonstration: the prompt without "
                                                 "demonstrations takes ")
    zero = client.post("/select", json=body | {"max_tokens": 0}, headers=KEY)
    assert zero.status_code == 422 and "max_tokens" in zero.json()["detail"]


def test_added_examples_are_persisted_and_selected(client, service):
    _, _, directory = service
    before = client.get("/health").json()["count"]
    added = client.post("/examples", headers=KEY, json={"examples": [
        {"fields": {"sentence": "the snorkelwump finale is glorious"}, "label": "positive"},
        {"fields": "a plodding, snorkelwump-free bore", "label": 0}]})
    assert added.status_code == 201, added.text
    ids = added.json()["ids"]
    assert added.json()["count"] == before + 2 and len(DemoIndex.load(directory)) == before + 2
    top = client.post("/select", json={"text": "glorious snorkelwump", "k": 1, "strategy": "bm25"}, headers=KEY)
    assert top.json()["examples"][0] | {"score": 0} == {
        "id": ids[0], "fields": {"sentence": "the snorkelwump finale is glorious"}, "label": 1,
        "label_name": "positive", "score": 0}


TOO_LONG = "word " * 100
BAD_REQUESTS = [
    ("/select", {"text": "fine", "k": 2}, {}, 401),
    ("/select", {"text": "fine", "k": 2}, {"X-API-Key": "wrong"}, 403),
    ("/examples", {"examples": [{"fields": "x", "label": 1}]}, {"X-API-Key": ""}, 401),  # empty = missing
    ("/select", b"{not json", KEY, 422),
    ("/select", b"[1, 2]", KEY, 422),
    ("/select", {"text": 123, "k": 2}, KEY, 422),
    ("/select", {"text": "fine", "k": "many"}, KEY, 422),
    ("/select", {"text": "fine", "k": True}, KEY, 422),
    ("/select", {"text": "fine", "k": 0}, KEY, 422),
    ("/select", {"text": "fine", "k": 41}, KEY, 422),  # over max_k
    ("/select", {"text": "fine", "k": 10**30}, KEY, 422),
    ("/select", {"text": "fine", "k": 35}, KEY, 422),  # within max_k, over the pool
    ("/select", {"text": "   ", "k": 2}, KEY, 422),
    ("/select", {"text": "bad \ud800 text", "k": 2}, KEY, 422),
    ("/select", rb'{"text": "a", "k": "\ud800", "\ud800": 1}', KEY, 422),  # errors must not echo unencodable input
    ("/select", rb'{"fields": {"\ud800": "a"}, "k": 2}', KEY, 422),
    ("/select", rb'"\ud800"', KEY, 422),
    ("/select", {"k": 2}, KEY, 422),
    ("/select", {"text": "a", "fields": {"sentence": "a"}, "k": 2}, KEY, 422),
    ("/select", {"fields": {"review": "a"}, "k": 2}, KEY, 422),
    ("/select", {"text": "fine", "k": 2, "strategy": "nope"}, KEY, 422),
    ("/select", {"text": "fine", "k": 2, "colour": "red"}, KEY, 422),
    ("/select", {"text": "fine", "k": 2, "max_tokens": 0}, KEY, 422),
    ("/select", {"text": "fine", "k": 2, "max_tokens": True}, KEY, 422),
    ("/select", {"text": "fine", "k": 2, "max_tokens": "many"}, KEY, 422),
    ("/select", {"text": TOO_LONG, "k": 2}, KEY, 413),
    ("/select", {"fields": {"sentence": TOO_LONG}, "k": 2}, KEY, 413),
    ("/select", {"text": "x" * 30_000, "k": 2}, KEY, 413),  # over the body limit
    ("/examples", {"examples": []}, KEY, 422),
    ("/examples", {"examples": [{"fields": "x", "label": 1}] * 5}, KEY, 413),
    ("/examples", {"examples": [{"fields": TOO_LONG, "label": 1}]}, KEY, 413),
    ("/examples", {"examples": [{"fields": "x", "label": "great"}]}, KEY, 422),
    ("/examples", {"examples": [{"fields": "x", "label": 7}]}, KEY, 422),
    ("/examples", {"examples": [{"fields": {"review": "x"}, "label": 1}]}, KEY, 422),
    ("/examples", {"examples": [{"fields": "", "label": 1}]}, KEY, 422),
    ("/examples", rb'{"examples": [{"fields": "x", "label": "\ud800"}]}', KEY, 422),
]


@pytest.mark.parametrize("path,body,headers,status", BAD_REQUESTS)
def test_bad_input_gets_a_clear_4xx(client, path, body, headers, status):
    before = client.get("/health").json()["count"]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = client.post(path, content=content, headers={"Content-Type": "application/json"} | headers)
    assert reply.status_code == status, reply.text
    assert reply.json()["detail"]
    assert client.get("/health").json()["count"] == before  # nothing was added


def test_without_a_key_selects_are_open_and_writes_refused_unless_allowed(service):
    _, selector, _ = service
    body = {"examples": [{"fields": "an open-door write", "label": 1}]}
    with running(create_app(selector)) as base:
        health = httpx.get(f"{base}/health").json()
        assert (health["auth"], health["writes"]) == (False, "off")
        reply = httpx.post(f"{base}/select", json={"text": "fine", "k": 2}, headers={"X-API-Key": "anything"})
        assert reply.status_code == 200 and len(reply.json()["examples"]) == 2
        refused = httpx.post(f"{base}/examples", json=body)
        assert refused.status_code == 403 and "takes no writes" in refused.json()["detail"]
    count = len(selector)
    with running(create_app(selector, allow_open_writes=True)) as base:
        assert httpx.get(f"{base}/health").json()["writes"] == "open"
        assert httpx.post(f"{base}/examples", json=body).status_code == 201 and len(selector) == count + 1


def test_a_read_key_selects_but_does_not_write(service):
    _, selector, _ = service
    with running(create_app(selector, api_key="writer", read_key="reader")) as base:
        health = httpx.get(f"{base}/health").json()
        assert health["auth"] is True and health["writes"] == "key"
        for key, status in (("reader", 200), ("writer", 200), ("other", 403)):
            assert httpx.post(f"{base}/select", json={"text": "fine", "k": 1},
                              headers={"X-API-Key": key}).status_code == status
        write = {"examples": [{"fields": "a reader's write", "label": 1}]}
        assert httpx.post(f"{base}/examples", json=write, headers={"X-API-Key": "reader"}).status_code == 403
        assert httpx.post(f"{base}/select", json={"text": "fine", "k": 1}).status_code == 401


def test_a_foreign_host_header_is_refused(service):
    _, selector, _ = service
    with running(create_app(selector)) as base:
        for path in ("/health", "/docs"):
            assert httpx.get(f"{base}{path}", headers={"Host": "evil.test"}).status_code == 400
        assert httpx.post(f"{base}/select", json={"text": "fine", "k": 1},
                          headers={"Host": "evil.test"}).status_code == 400
        assert httpx.get(f"{base}/health", headers={"Host": "localhost:8000"}).status_code == 200
    with running(create_app(selector, allowed_hosts=["ricl.internal"])) as base:
        assert httpx.get(f"{base}/health", headers={"Host": "ricl.internal"}).status_code == 200
        assert httpx.get(f"{base}/health").status_code == 400  # 127.0.0.1 is not on this list


def test_health_names_a_local_encoder_folder_without_its_path(tmp_path):
    from retrieval_icl.retrieval.sentence_encoder import packaged_encoder_path

    encoder = Encoder(str(packaged_encoder_path()), cache_dir=tmp_path / "emb")
    build_index(tmp_path / "index", encoder, n=6)
    selector = DemoSelector.load(tmp_path / "index", encoder=encoder)
    with running(create_app(selector)) as base:
        health = httpx.get(f"{base}/health").text
    assert str(packaged_encoder_path()) not in health and str(tmp_path) not in health
    assert json.loads(health)["encoder"] == packaged_encoder_path().name


def test_form_body_and_wrong_method_are_refused(client):
    assert client.post("/select", data={"text": "fine"}, headers=KEY).status_code == 422
    assert client.get("/select").status_code == 405


def referenced_urls(html: str) -> list[str]:
    """Every URL a docs page loads: scripts, stylesheets, the icon and the schema."""
    return [a or b for a, b in re.findall(r'(?:src|href|spec-url)="([^"]+)"|url: \'([^\']+)\'', html)]


def assert_served_offline(client: httpx.Client, page: str, prefix: str = "") -> None:
    """`page` answers HTML naming no other host, and every URL it names answers 200 from this server, without a key."""
    reply = client.get(page)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html"), reply.text[:500]
    assert not re.search(r"https?://", reply.text), reply.text  # no CDN, no Google fonts
    # and the browser is told to load nothing from another host (ReDoc's bundle asks a CDN for a logo)
    assert reply.headers["content-security-policy"].startswith("default-src 'self';"), reply.headers
    assert not re.search(r"https?:|\*", reply.headers["content-security-policy"]), reply.headers
    urls = referenced_urls(reply.text)
    assert f"{prefix}/openapi.json" in urls and any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith(prefix + "/"), url
        got = client.get(url)
        assert got.status_code == 200, (url, got.status_code)
        if url.endswith(".js"):  # the whole Swagger UI or ReDoc bundle, not a loader that fetches the rest
            assert len(got.content) > 500_000 and "javascript" in got.headers["content-type"], url
        elif url.endswith(".css"):
            assert len(got.content) > 50_000 and got.headers["content-type"].startswith("text/css"), url
        elif url.endswith(".png"):
            assert got.content.startswith(b"\x89PNG"), url
        else:
            assert got.json()["info"]["title"] == "retrieval-icl", url


def test_docs_and_redoc_pages_load_every_asset_from_the_service(client):
    for page in ("/docs", "/redoc"):
        assert_served_offline(client, page)  # `client` sends no key: like /openapi.json, the pages are public
    schema = client.get("/openapi.json").json()
    assert not {"/docs", "/redoc"} & set(schema["paths"])
    assert client.post("/select", json={"text": "fine", "k": 2}).status_code == 401  # the key still guards /select


def test_docs_pages_follow_the_path_the_app_is_mounted_under(service):
    outer = FastAPI()
    outer.mount("/ricl", create_app(service[1], batching=False))  # as behind a proxy that forwards /ricl/...
    with running(outer) as base, httpx.Client(base_url=base, timeout=30) as client:
        for page in ("/ricl/docs", "/ricl/redoc"):
            assert_served_offline(client, page, prefix="/ricl")


def test_add_docs_refuses_an_app_with_fastapis_cdn_pages():
    with pytest.raises(ValueError, match=r"expected FastAPI\(docs_url=None, redoc_url=None\)"):
        add_docs(FastAPI())


def test_the_per_request_path_answers_the_same(client, service):
    _, selector, _ = service
    bodies = [{"text": "a gorgeous, witty film", "k": 3}, {"text": "fine", "k": 2, "strategy": "mmr"},
              {"text": "fine", "k": 35}, {"text": "fine", "k": 2, "strategy": "nope"}, {"text": "  ", "k": 2}]
    app = create_app(selector, api_key=KEY["X-API-Key"], limits=LIMITS, batching=False)
    with running(app) as base:
        assert not hasattr(app.state, "batcher")
        for body in bodies:
            alone = httpx.post(f"{base}/select", json=body, headers=KEY, timeout=30)
            batched = client.post("/select", json=body, headers=KEY)
            assert (alone.status_code, alone.json()) == (batched.status_code, batched.json())


def test_the_batcher_runs_while_the_app_is_up(service):
    app = create_app(service[1])
    with running(app) as base:
        batcher = app.state.batcher
        assert batcher.running
        assert httpx.post(f"{base}/select", json={"text": "fine", "k": 2}, timeout=30).status_code == 200
    assert not batcher.running  # the lifespan closed it when the server shut down


@pytest.fixture
def held_service(tmp_path):
    """(base URL, app, DemoSelector, CountingModel) for a batching server whose encoder a test can hold."""
    encoder, model = counting_encoder(tmp_path / "emb")
    build_index(tmp_path / "index", encoder)
    selector = DemoSelector.load(tmp_path / "index", encoder=encoder).warm_up()
    app = create_app(selector, limits=LIMITS)
    with running(app) as base:
        yield base, app, selector, model


def concurrent_replies(held_service, bodies: list[dict], queued: int) -> list[httpx.Response]:
    """Replies to `bodies`, sent from one thread each while the encoder is held on an earlier request, released
    once `queued` of them wait in the batcher: those reach the worker as one batch."""
    base, app, _, model = held_service
    replies: dict[int, httpx.Response] = {}

    def post(n: int, body: dict) -> None:
        replies[n] = httpx.post(f"{base}/select", json=body, timeout=60)

    model.hold()
    holder = threading.Thread(target=post, args=(-1, {"text": "hold the encoder", "k": 1}))
    holder.start()
    assert model.entered.wait(timeout=30)
    threads = [threading.Thread(target=post, args=(n, body)) for n, body in enumerate(bodies)]
    for t in threads:
        t.start()
    wait_until(lambda: app.state.batcher.queued == queued, f"{queued} requests queued")
    model.calls.clear()
    model.gate.set()
    for t in [holder, *threads]:
        t.join(timeout=60)
    assert replies[-1].status_code == 200
    return [replies[n] for n in range(len(bodies))]


GOOD = [{"text": "a gorgeous, witty film", "k": 3}, {"text": "dull and slow", "k": 3, "strategy": "mmr"},
        {"fields": {"sentence": "the cast is a joy"}, "k": 5}, {"text": "a gorgeous, witty film", "k": 3,
                                                                 "strategy": "random"},
        {"text": "nothing happens at all", "k": 2, "strategy": "bm25"}, {"text": "dull and slow", "k": 3},
        {"text": "a slow, gorgeous film", "k": 3, "strategy": "knn"}]


def assert_like_the_library(reply: httpx.Response, body: dict, selector: DemoSelector) -> None:
    """The reply holds what DemoSelector.select returns for its body (scores within float rounding of batching)."""
    assert reply.status_code == 200, reply.text
    query = body.get("text", body.get("fields"))
    expected = [c.to_dict() for c in selector.select(query, body["k"], body.get("strategy"))]
    got = reply.json()["examples"]
    assert [e | {"score": 0} for e in got] == [e | {"score": 0} for e in expected]
    assert [e["score"] for e in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    assert reply.json()["strategy"] == body.get("strategy", "knn")


def test_concurrent_selects_are_encoded_together_and_answered_like_the_library(held_service):
    _, _, selector, model = held_service
    replies = concurrent_replies(held_service, GOOD, queued=len(GOOD))
    assert model.calls == [5]  # the five distinct query texts of all four strategies, in one encoder call
    for reply, body in zip(replies, GOOD):
        assert_like_the_library(reply, body, selector)


def test_a_bad_query_among_concurrent_ones_fails_alone_with_its_own_message(held_service):
    _, _, selector, model = held_service
    early = [{"text": "fine", "k": 35}, {"text": "fine", "k": 2, "strategy": "nope"}, {"text": "  ", "k": 2}]
    late = [{"text": "fine", "k": 2, "max_tokens": 5}]  # only the worker finds the budget too small
    replies = concurrent_replies(held_service, GOOD + early + late, queued=len(GOOD) + 1)  # early: never queued
    assert model.calls[0] == 6 and max(model.calls[1:]) == 1  # the whole batch, then one by one
    for reply, body in zip(replies, GOOD):
        assert_like_the_library(reply, body, selector)
    for reply, pattern in zip(replies[len(GOOD):], ["k=35 is more than the 30 examples",
                                                    "strategy 'nope' is not served here", "text"]):
        assert reply.status_code == 422 and pattern in reply.json()["detail"], reply.text
    with pytest.raises(RiclError) as alone:
        selector.select("fine", 2, max_tokens=5)
    assert (replies[-1].status_code, replies[-1].json()["detail"]) == (422, str(alone.value))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ricl_serve_binds_loopback_by_default(tmp_path):
    build_index(tmp_path / "index", Encoder(cache_dir=tmp_path / "emb"), n=10)
    port = free_port()
    (tmp_path / "key").write_text("k\n")  # the key from a file: not in argv, where `ps` shows it
    env = os.environ | {"RICL_CACHE_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "retrieval_icl", "serve", "--index", str(tmp_path / "index"),
                             "--port", str(port), "--api-key-file", str(tmp_path / "key")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.stdout.read()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, "ricl serve answering /health", attempts=3600)  # a fresh cache: the tokenizer is converted
        assert httpx.post(f"http://127.0.0.1:{port}/select", json={"text": "fine", "k": 1}).status_code == 401
        assert httpx.post(f"http://127.0.0.1:{port}/select", json={"text": "fine", "k": 1},
                          headers={"X-API-Key": "k"}).status_code == 200
        if Path("/proc/net/tcp").exists():
            assert listening_addresses(port) == {"0100007F"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert f"on http://127.0.0.1:{port}" in proc.stdout.read()


def listening_addresses(port: int) -> set[str]:
    """Addresses listening on a TCP port, as /proc/net/tcp and tcp6 write them (hex; 0100007F is 127.0.0.1)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in (line.split() for line in Path(table).read_text().splitlines()[1:]):
            address, port_hex = row[1].split(":")
            if row[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_labels_of_an_index_without_names_are_bounded_by_its_largest_id(tmp_path):
    encoder = Encoder(cache_dir=tmp_path / "emb")
    examples = load_examples(load_task("sst2"), "train", DATA)[:6]  # labels 0 and 1, no names saved
    DemoIndex(encoder).build(examples, text_fields=["sentence"]).save(tmp_path / "index")
    selector = DemoSelector.load(tmp_path / "index", encoder=encoder)
    assert selector.label_names is None
    with running(create_app(selector, allow_open_writes=True)) as base:
        huge = httpx.post(f"{base}/examples", json={"examples": [{"fields": "x", "label": 10**12}]})
        assert huge.status_code == 422 and "is not an integer id 0..2" in huge.json()["detail"], huge.text
        assert len(DemoIndex.load(tmp_path / "index")) == 6  # nothing saved
        new = httpx.post(f"{base}/examples", json={"examples": [{"fields": "a third kind", "label": 2}]})
        assert new.status_code == 201, new.text
        assert httpx.post(f"{base}/examples", json={"examples": [{"fields": "y", "label": 4}]}).status_code == 422


def test_a_failed_save_adds_nothing_and_answers_507(tmp_path, monkeypatch):
    import errno

    encoder = Encoder(cache_dir=tmp_path / "emb")
    build_index(tmp_path / "index", encoder, n=8)
    selector = DemoSelector.load(tmp_path / "index", encoder=encoder)
    body = {"examples": [{"fields": "the zorblax sequel is wonderful", "label": 1}]}
    with running(create_app(selector, allow_open_writes=True)) as base:
        with monkeypatch.context() as m:
            m.setattr(DemoIndex, "save", lambda self, d: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
            full = httpx.post(f"{base}/examples", json=body)
            assert full.status_code == 507 and "disk is full" in full.json()["detail"], full.text
            m.setattr(DemoIndex, "save", lambda self, d: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
            assert httpx.post(f"{base}/examples", json=body).status_code == 503
        assert httpx.get(f"{base}/health").json()["count"] == 8 and len(selector) == 8
        top = httpx.post(f"{base}/select", json={"text": "zorblax sequel", "k": 8, "strategy": "bm25"}).json()
        assert all("zorblax" not in e["fields"]["sentence"] for e in top["examples"])  # never served
        retried = httpx.post(f"{base}/examples", json=body)  # the client's retry stores it once
        assert retried.status_code == 201 and retried.json()["count"] == 9
        assert len(DemoIndex.load(tmp_path / "index")) == 9


@pytest.mark.parametrize("args, message", [
    (["--api-key", "a", "--api-key-file", "KEYFILE"], "--api-key and --api-key-file both given"),
    (["--read-key-file", "EMPTY"], "--read-key-file .*: the first line is empty"),
    (["--api-key-file", "MISSING"], "--api-key-file .*: cannot read it"),
])
def test_serve_refuses_bad_key_options(tmp_path, args, message):
    from typer.testing import CliRunner

    from retrieval_icl.cli import app as cli_app

    (tmp_path / "KEYFILE").write_text("k\n")
    (tmp_path / "EMPTY").write_text("\n")
    args = [str(tmp_path / a) if a in ("KEYFILE", "EMPTY", "MISSING") else a for a in args]
    result = CliRunner().invoke(cli_app, ["serve", "--index", str(tmp_path / "none"), *args])
    assert result.exit_code == 2 and re.search(message, result.stderr), result.output


def test_an_add_to_an_index_another_process_saved_meanwhile_answers_409(tmp_path):
    encoder = Encoder(cache_dir=tmp_path / "emb")
    build_index(tmp_path / "index", encoder, n=8)
    served = DemoSelector.load(tmp_path / "index", encoder=encoder)
    other = DemoSelector.load(tmp_path / "index", encoder=encoder)  # say `ricl index fit`, or a second server
    other.add_examples([{"fields": "the other writer's example", "label": 1}], save=True)
    with running(create_app(served, api_key="k")) as base:
        reply = httpx.post(f"{base}/examples", json={"examples": [{"fields": "late", "label": 0}]},
                           headers={"X-API-Key": "k"})
        assert reply.status_code == 409 and "saved by another writer" in reply.json()["detail"], reply.text
    texts = [ex.texts[0] for ex in DemoIndex.load(tmp_path / "index").examples]
    assert "the other writer's example" in texts and "late" not in texts and len(served) == 8


def test_an_unserved_strategy_is_refused_without_fitting_it(service):
    _, selector, _ = service
    with running(create_app(selector)) as base:
        assert "kmeans" not in httpx.get(f"{base}/health").json()["strategies"]
        started = time.perf_counter()
        reply = httpx.post(f"{base}/select", json={"text": "fine", "k": 3, "strategy": "kmeans"})
        assert reply.status_code == 422 and "'kmeans' is not served here" in reply.json()["detail"]
        assert time.perf_counter() - started < 2 and "kmeans" not in selector._fitted  # nothing was fitted
    with running(create_app(selector, strategies=["kmeans"])) as base:  # named at start-up: served
        body = {"text": "fine", "k": 3, "strategy": "kmeans"}
        first = httpx.post(f"{base}/select", json=body)  # its ranking for k=3 is not made on the request's time
        assert first.status_code == 503 and first.headers["retry-after"] == "1", first.text
        assert "'kmeans' for k=3 is being fitted" in first.json()["detail"]
        wait_until(lambda: selector.fitted_for("kmeans", 3), "the background fit")
        chosen = httpx.post(f"{base}/select", json=body)
        assert chosen.status_code == 200 and [e["id"] for e in chosen.json()["examples"]] == [
            c.id for c in DemoSelector(selector.index).select("fine", k=3, strategy="kmeans")]
    with pytest.raises(RiclError, match="unknown strategies to serve: \\['nope'\\]"):
        create_app(selector, strategies=["nope"])


def test_warm_up_fits_the_served_strategies_and_loads_the_tokenizer(tmp_path):
    encoder = Encoder(cache_dir=tmp_path / "emb")
    build_index(tmp_path / "index", encoder, n=10)
    selector = DemoSelector.load(tmp_path / "index", encoder=encoder, tokenizer=tiny_tokenizer_name())
    selector.warm_up(["mmr", "bm25"], tokenizer=True)
    assert set(selector._fitted) == {"knn", "mmr", "bm25"} and selector.prompt_budget._loaded is not None


def tiny_tokenizer_name() -> str:
    return "smollm2-135m"


def test_a_select_held_past_the_time_limit_answers_503(tmp_path):
    encoder, model = counting_encoder(tmp_path / "emb")
    build_index(tmp_path / "index", encoder, n=10)
    selector = DemoSelector.load(tmp_path / "index", encoder=encoder).warm_up()
    with running(create_app(selector, limits=Limits(request_seconds=0.5))) as base:
        model.hold()  # the one worker is stuck in an encode
        try:
            started = time.perf_counter()
            reply = httpx.post(f"{base}/select", json={"text": "fine", "k": 2}, timeout=30)
            assert reply.status_code == 503 and "busy" in reply.json()["detail"], reply.text
            assert time.perf_counter() - started < 5 and reply.headers["retry-after"] == "1"
        finally:
            model.gate.set()
        assert httpx.post(f"{base}/select", json={"text": "fine", "k": 2}, timeout=30).status_code == 200
