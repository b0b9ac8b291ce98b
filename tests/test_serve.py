"""curmoe serve: real servers in subprocesses on free ports, spoken to with the real ``openai`` client and raw HTTP.

Three servers start once (in parallel) for the module:

- ``ort``: models/wt2-moe-tiny on onnxruntime:cpu, 32 slots, no chat template: greedy identity (alone, among 31
  others, in-process ``generate``, the ``curmoe generate`` CLI), streaming, stop strings, logprobs, seeded
  sampling, every malformed request, /metrics;
- ``ref``: the same checkpoint on the NumPy reference runtime with a chat template attached beside the tokenizer
  and an API key: identity among 31 others on the reference, chat completions, authentication;
- ``tight``: 1 slot, a queue of 1 and a 0.5 s queue timeout, on a runtime registered by the test in the server
  process (``slow``: ONNX Runtime with a 20 ms sleep before every run, so a 127-token request holds the slot for
  2.5 s or more whatever the machine's load): 429 and 503 naming their limits, disconnects freeing the slot, and
  graceful shutdown (SIGTERM while a stream runs: the stream finishes).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")

from curmoe.runtimes.serve.metrics import Counter, Histogram, Metrics  # noqa: E402
from curmoe.runtimes.serve.protocol import APIError, CompletionRequest, parse_body  # noqa: E402
from curmoe.runtimes.serve.text import StreamDecoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "wt2-moe-tiny"
MODEL = "wt2-moe-tiny"
KEY = "sekret-key"
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
            "{% if add_generation_prompt %}assistant :{% endif %}")
# 32 prompts of different lengths (the batch pads them differently) from WikiText-like words
WORDS = "the history of the city was written in the early years of the war and the king".split()
PROMPTS = [" ".join(WORDS[(i * 3) % 7: (i * 3) % 7 + 1 + i % 9]) for i in range(32)]


# (not ``-m curmoe.app.cli``: run as __main__, cli.py would be a second module that the commands/ modules,
# serve among them, do not register into)
CLI = [sys.executable, "-c", "import sys; from curmoe.app.cli import main; sys.exit(main())"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# an adapter module for the ``slow`` runtime: ONNX Runtime, sleeping ``target`` seconds before every run
SLOW_ADAPTER = """
import time
from curmoe.runtimes import load as _load

def devices(target):
    return ["cpu"]

class Slow:
    def __init__(self, inner, delay):
        self.inner, self.delay, self.path = inner, delay, inner.path
        self.inputs, self.outputs, self.metadata = inner.inputs, inner.outputs, inner.metadata

    def run(self, feeds, outputs=None):
        time.sleep(self.delay)
        return self.inner.run(feeds, outputs)

    def info(self):
        return self.inner.info()

def load(path, target, name=None, threads=None, **kw):
    return Slow(_load(path, "onnxruntime:cpu", threads=threads), float(target))
"""
SLOW_CLI = [sys.executable, "-c", "import sys; from curmoe.runtimes import RuntimeEntry, register; "
            "register('slow', RuntimeEntry('curmoe_test_slowrt', 'numpy', 'test', '0.02')); "
            "from curmoe.app.cli import main; sys.exit(main())"]


class Server:
    def __init__(self, model: Path, *args: str, env: dict[str, str], log: Path, cli: list[str] = CLI) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [*cli, "serve", str(model), "--port", str(self.port),
               "--log-level", "warning", *args]
        with open(log, "w") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 60) -> Server:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log.read_text()}")

    def client(self, key: str | None = None, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, **kw)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    env = dict(os.environ, CURMOE_CACHE_DIR=str(tmp / "cache"), OMP_NUM_THREADS="1")
    os.environ["CURMOE_CACHE_DIR"] = env["CURMOE_CACHE_DIR"]
    chat_dir = tmp / "tiny-chat"  # the checkpoint with a chat template beside its tokenizer
    chat_dir.mkdir()
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        os.symlink(TINY / f, chat_dir / f)
    (chat_dir / "chat_template.jinja").write_text(TEMPLATE)
    (chat_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    s = {  # the reference servers start while the checkpoint is exported for the ONNX Runtime one
        "ref": Server(chat_dir, "--runtime", "reference", "--api-key", KEY, "--served-model-name", MODEL,
                      env=env, log=tmp / "ref.log"),
    }
    from curmoe.runtimes.serve.model import resolve_model

    onnx, _ = resolve_model(TINY, "onnxruntime:cpu")  # export once: the servers below find it in the cache
    (tmp / "curmoe_test_slowrt.py").write_text(SLOW_ADAPTER)
    slow_env = env | {"PYTHONPATH": os.pathsep.join([str(tmp), env.get("PYTHONPATH", "")])}
    s["tight"] = Server(TINY, "--runtime", "slow", "--max-batch", "1", "--max-queue", "1", "--queue-timeout", "0.5",
                        "--shutdown-timeout", "20", env=slow_env, log=tmp / "tight.log", cli=SLOW_CLI)
    s["ort"] = Server(TINY, "--runtime", "onnxruntime:cpu", "--threads", "1", "--max-body-bytes", "4096",
                      "--max-prompt-tokens", "40", "--max-tokens-limit", "100", env=env, log=tmp / "ort.log")
    try:
        for v in s.values():
            v.wait_ready()
        yield s | {"onnx": onnx}
    finally:
        for v in s.values():
            if isinstance(v, Server):
                v.stop()
        os.environ.pop("CURMOE_CACHE_DIR", None)


def _complete(client, prompt: str, max_tokens: int = 12, **kw):
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)


def _in_process(path, runtime: str, prompts: list[str], max_tokens: int, **kw) -> list[str]:
    """What ``curmoe generate`` computes: runtimes.generate on the same file, decoded by the same tokenizer."""
    from curmoe.models.tokenizer import load_tokenizer
    from curmoe.runtimes import generate, load

    sess = load(path, runtime)
    tok = load_tokenizer(TINY / "tokenizer.json")
    out = []
    for p in prompts:
        ids = tok.encode(p, add_special_tokens=False).ids
        seq = generate(sess, np.asarray(ids, np.int64), max_tokens, eos_token_id=1, **kw)
        out.append(tok.decode(seq[len(ids):].tolist()))
    return out


def _concurrently(fn, items: list) -> list:
    """Run ``fn`` on every item at once (a barrier releases all threads together)."""
    barrier = threading.Barrier(len(items))

    def go(x):
        barrier.wait()
        return fn(x)

    with ThreadPoolExecutor(len(items)) as ex:
        return list(ex.map(go, items))


def _max_batch_seen(metrics: str) -> int:
    """The largest decode batch size bucket with observations, from the Prometheus histogram."""
    rows = [ln for ln in metrics.splitlines() if ln.startswith("curmoe_decode_batch_size_bucket")]
    prev, top = 0, 0
    for ln in rows:
        le, n = ln.split('le="')[1].split('"')[0], int(ln.rsplit(" ", 1)[1])
        if n > prev and le != "+Inf":
            top = int(float(le))
        prev = n
    return top


# --- identity: alone, among 31 others, in-process generate, curmoe generate -----------------------------
def test_greedy_identical_alone_among_31_and_to_generate_ort(servers):
    srv = servers["ort"]
    cli = subprocess.Popen([*CLI, "generate", str(servers["onnx"]), "--prompt", PROMPTS[5], "--max-new-tokens", "16",
                            "--json"], stdout=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    c = srv.client()
    alone = [_complete(c, p, 16).choices[0].text for p in PROMPTS]
    crowd = _concurrently(lambda p: _complete(srv.client(), p, 16).choices[0].text, PROMPTS)
    assert crowd == alone
    assert alone == _in_process(servers["onnx"], "onnxruntime:cpu", PROMPTS, 16)
    assert len(set(alone)) > 3  # the prompts lead to different answers (the comparison can fail)
    assert _max_batch_seen(srv.metrics()) >= 16  # the crowd really shared decode steps
    out, _ = cli.communicate(timeout=60)
    assert cli.returncode == 0 and json.loads(out)["completion"] == alone[5]


def test_greedy_identical_among_31_on_reference(servers):
    srv = servers["ref"]
    crowd = _concurrently(lambda p: _complete(srv.client(KEY), p, 4).choices[0].text, PROMPTS)
    assert crowd == _in_process(TINY, "reference", PROMPTS, 4)
    assert [_complete(srv.client(KEY), p, 4).choices[0].text for p in PROMPTS[:3]] == crowd[:3]
    assert _max_batch_seen(srv.metrics()) >= 16


def test_seeded_sampling_matches_generate(servers):
    c = servers["ort"].client()
    got = [c.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0.9, top_p=0.8, seed=7)
           .choices[0].text for p in PROMPTS[:4]]
    assert got == _in_process(servers["onnx"], "onnxruntime:cpu", PROMPTS[:4], 16, temperature=0.9, top_p=0.8,
                              seed=7)


# --- the API ---------------------------------------------------------------------------------------------
def test_streaming_equals_whole_and_usage(servers):
    c = servers["ort"].client()
    whole = _complete(c, PROMPTS[7], 20)
    chunks = list(_complete(c, PROMPTS[7], 20, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole.choices[0].text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert whole.usage.prompt_tokens == len(PROMPTS[7].split())  # word-level: one token per word here


def test_stop_strings_and_echo(servers):
    c = servers["ort"].client()
    full = _complete(c, "the history of", 30).choices[0].text
    assert "," in full
    cut = _complete(c, "the history of", 30, stop=[","])
    assert cut.choices[0].text == full[:full.index(",")] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in _complete(c, "the history of", 30, stop=",", stream=True))
    assert streamed == cut.choices[0].text
    echo = _complete(c, "the history of", 5, echo=True).choices[0].text
    assert echo == "the history of" + _complete(c, "the history of", 5).choices[0].text


def test_logprobs(servers):
    r = _complete(servers["ort"].client(), PROMPTS[3], 8, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == r.usage.completion_tokens == len(lp.tokens) == 8
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert l <= 0 and len(top) == 3
        assert max(top.values()) == pytest.approx(l) and top[tok] == pytest.approx(l)  # greedy took the best


def test_models_and_errors(servers):
    srv = servers["ort"]
    c = srv.client()
    assert [m.id for m in c.models.list().data] == [MODEL]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.completions.create(model="gpt-4", prompt="the", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match=r"exceeds the limit of 100 \(--max-tokens-limit 100\)"):
        _complete(c, "the", 101)
    with pytest.raises(openai.APIStatusError, match=r"limit is 40 prompt tokens \(--max-prompt-tokens 40") as e:
        _complete(c, "the " * 41, 2)
    assert e.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="n=2"):
        c.completions.create(model=MODEL, prompt="the", max_tokens=2, n=2)
    post = lambda body, **kw: httpx.post(srv.url + "/v1/completions", content=body, timeout=10, **kw)  # noqa: E731
    cases = [
        (b'{"model": "wt2-moe-tiny", "prompt": ', 400, "invalid_json", None),
        (b'{"model": "wt2-moe-tiny", "prompt": "\xff\xfe"}', 400, "invalid_body", None),
        (b'[1, 2]', 400, "invalid_body", None),
        (b'{"model": "wt2-moe-tiny", "prompt": "the", "max_tokens": "5"}', 400, "invalid_value", "max_tokens"),
        (b'{"model": "wt2-moe-tiny", "prompt": "the", "max_tokens": 2.5}', 400, "invalid_value", "max_tokens"),
        (b'{"model": "wt2-moe-tiny", "prompt": "the", "temperature": "hot"}', 400, "invalid_value", "temperature"),
        (b'{"model": "wt2-moe-tiny", "prompt": "the", "top_p": 0}', 400, "invalid_value", "top_p"),
        (b'{"model": "wt2-moe-tiny"}', 400, "invalid_value", "prompt"),
        (b'{"model": "wt2-moe-tiny", "prompt": [99999]}', 400, "invalid_value", "prompt"),
        (b'{"model": "wt2-moe-tiny", "prompt": "the", "max_tokens": 120}', 400, "max_tokens_exceeded", "max_tokens"),
        (b'{"model": "wt2-moe-tiny", "prompt": "' + b"the " * 30 + b'", "max_tokens": 100}', 400,
         "context_length_exceeded", "max_tokens"),
        (b'{"model": "wt2-moe-tiny", "prompt": "' + b"x" * 5000 + b'"}', 413, "body_too_large", None),
    ]
    for body, status, code, param in cases:
        r = post(body)
        err = r.json()["error"]
        assert (r.status_code, err["code"], err["param"]) == (status, code, param), (body[:60], r.text)
        assert err["message"] and err["type"]
    big = post(b"x" * 5000).json()["error"]["message"]
    assert "limit of 4096 bytes (--max-body-bytes 4096)" in big
    r = httpx.get(srv.url + "/v1/nothing", timeout=5)
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(srv.url + "/v1/completions", timeout=5).status_code == 405
    assert _complete(c, "the", 2).choices[0].text  # still serving after all of that
    assert httpx.post(srv.url + "/v1/completions", json={"model": MODEL, "prompt": [3, 4, 5], "max_tokens": 2,
                                                          "temperature": 0}, timeout=10).status_code == 200


def test_metrics_prometheus_text(servers):
    srv = servers["ort"]
    _complete(srv.client(), "the", 3)
    text = srv.metrics()
    for name, kind in [("curmoe_requests_total", "counter"), ("curmoe_prompt_tokens_total", "counter"),
                       ("curmoe_generation_tokens_total", "counter"), ("curmoe_queue_depth", "gauge"),
                       ("curmoe_active_sequences", "gauge"), ("curmoe_time_to_first_token_seconds", "histogram"),
                       ("curmoe_time_per_output_token_seconds", "histogram")]:
        assert f"# TYPE {name} {kind}" in text
    val = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if not ln.startswith("#")}
    assert val['curmoe_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert val["curmoe_generation_tokens_total"] >= 3
    assert val["curmoe_time_to_first_token_seconds_count"] >= 1
    assert val['curmoe_time_to_first_token_seconds_bucket{le="+Inf"}'] == val["curmoe_time_to_first_token_seconds_count"]
    assert val["curmoe_active_sequences"] == 0 and val["curmoe_queue_depth"] == 0


def test_chat_with_template_and_api_key(servers):
    srv = servers["ref"]
    with pytest.raises(openai.AuthenticationError, match="API key"):
        srv.client("wrong").models.list()
    assert httpx.get(srv.url + "/v1/models", timeout=5).status_code == 401
    c = srv.client(KEY)
    msgs = [{"role": "user", "content": "the history of"}]
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0)
    prompt = "user : the history of <eos> assistant :"
    ids_text = _in_process(TINY, "reference", [prompt], 6)[0]
    assert r.choices[0].message.content == ids_text and r.choices[0].message.role == "assistant"
    from curmoe.models.tokenizer import load_tokenizer

    assert r.usage.prompt_tokens == len(load_tokenizer(TINY).encode(prompt, add_special_tokens=False).ids)
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ids_text


# --- limits, disconnects, shutdown on the 1-slot server -----------------------------------------------------
def _wait(pred, timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _long(srv, **kw):
    return httpx.post(srv.url + "/v1/completions", json={"model": MODEL, "prompt": "the", "max_tokens": 127,
                                                          "temperature": 0, "ignore_eos": True} | kw, timeout=60)


def _tokens_out(srv) -> float:
    line = next(ln for ln in srv.metrics().splitlines() if ln.startswith("curmoe_generation_tokens_total"))
    return float(line.split()[-1])


def test_queue_full_429_and_queue_timeout_503(servers):
    srv = servers["tight"]
    with ThreadPoolExecutor(3) as ex:
        a = ex.submit(_long, srv)  # holds the only slot for 127 steps of >= 20 ms
        assert _wait(lambda: srv.health()["active_sequences"] == 1)
        # two more at once: whichever comes first waits in the queue (and times out), the other finds it full
        bc = [ex.submit(_long, srv, max_tokens=2) for _ in range(2)]
        rs = sorted((f.result() for f in bc), key=lambda r: r.status_code)
        ra = a.result()
    assert [r.status_code for r in rs] == [429, 503], [r.text for r in rs]
    assert rs[0].headers["retry-after"] == "1" and "queue limit is 1 (--max-queue 1)" in rs[0].json()["error"]["message"]
    assert "--queue-timeout 0.5" in rs[1].json()["error"]["message"]
    assert ra.status_code == 200 and ra.json()["usage"]["completion_tokens"] == 127


def test_disconnect_frees_the_slot(servers):
    srv = servers["tight"]
    before = _tokens_out(srv)
    with httpx.stream("POST", srv.url + "/v1/completions", timeout=30,
                      json={"model": MODEL, "prompt": "the", "max_tokens": 127, "temperature": 0,
                            "ignore_eos": True, "stream": True}) as r:
        next(r.iter_lines())  # the first token arrived; now hang up
    assert _wait(lambda: srv.health()["active_sequences"] == 0, 5)
    with pytest.raises(httpx.ReadTimeout):  # a non-streamed request whose client gives up
        httpx.post(srv.url + "/v1/completions", timeout=0.2, json={
            "model": MODEL, "prompt": "the", "max_tokens": 127, "temperature": 0, "ignore_eos": True})
    assert _wait(lambda: srv.health()["active_sequences"] == 0, 5)
    assert _tokens_out(srv) - before < 200  # both were cut short of their 2 x 127 tokens
    assert _long(srv, max_tokens=3).status_code == 200  # the slot is free again


def test_graceful_shutdown_finishes_the_stream(servers):
    srv = servers["tight"]
    with httpx.stream("POST", srv.url + "/v1/completions", timeout=30,
                      json={"model": MODEL, "prompt": "the", "max_tokens": 60, "temperature": 0,
                            "ignore_eos": True, "stream": True}) as r:
        lines = r.iter_lines()
        first = next(lines)
        srv.proc.send_signal(signal.SIGTERM)
        rest = [first, *lines]
    events = [ln[len("data: "):] for ln in rest if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert srv.proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it shut down cleanly
    assert "Traceback" not in srv.log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=2)


# --- in-process pieces ----------------------------------------------------------------------------------
class _Pieces:
    """A fake codec: token i decodes to PIECES[i] (no separators), so decode(ids) is their concatenation."""

    PIECES = ["a", "b", ",", "ab", "\n", "ba", "x"]

    def decode(self, ids):
        return "".join(self.PIECES[i] for i in ids)


@given(st.lists(st.integers(0, 6), max_size=30), st.lists(st.sampled_from(["ab", ",", "ba\n", "xa", "b"]),
                                                          max_size=3))
def test_stream_decoder_cuts_at_the_first_stop(ids, stop):
    dec = StreamDecoder(_Pieces(), stop)  # type: ignore[arg-type]
    out = ""
    for i in ids:
        out += dec.push(i)
        if dec.stopped:
            break
    out += dec.flush()
    full = _Pieces().decode(ids)
    cut = min([full.find(s) for s in stop if s in full], default=len(full))
    assert out == full[:cut]
    assert dec.stopped == (cut < len(full))


def test_parse_body_errors():
    with pytest.raises(APIError, match="not UTF-8"):
        parse_body(b"\xff", CompletionRequest)
    with pytest.raises(APIError, match="'stream'") as e:
        parse_body(b'{"model": "m", "prompt": "x", "stream": "yes"}', CompletionRequest)
    assert e.value.status == 400 and e.value.param == "stream"
    assert parse_body(b'{"model": "m", "prompt": [1, 2], "unknown": 1}', CompletionRequest).prompt == [1, 2]


def test_metrics_render():
    m = Metrics()
    m.requests.inc(endpoint="/v1/completions", status="200")
    for v in (0.002, 0.02, 0.2):
        m.ttft.observe(v)
    text = m.render()
    assert 'curmoe_requests_total{endpoint="/v1/completions",status="200"} 1' in text
    assert 'curmoe_time_to_first_token_seconds_bucket{le="0.0025"} 1' in text
    assert 'curmoe_time_to_first_token_seconds_bucket{le="0.025"} 2' in text
    assert "curmoe_time_to_first_token_seconds_count 3" in text
    assert isinstance(m.requests, Counter) and isinstance(m.ttft, Histogram)


def test_kv_batch_matches_alone(servers):
    """The engine in-process: 12 requests through 5 slots (join and leave mid-flight) decode as alone."""
    from curmoe.runtimes import generate, load
    from curmoe.runtimes.serve import Done, Engine, EngineConfig, GenRequest, Token

    sess = load(servers["onnx"], "onnxruntime:cpu", threads=1)
    rng = np.random.default_rng(0)
    prompts = [tuple(int(x) for x in rng.integers(3, 8000, int(rng.integers(1, 30)))) for _ in range(12)]
    lengths = [int(x) for x in rng.integers(1, 30, 12)]
    got: dict[int, list] = {i: [] for i in range(12)}
    eng = Engine(sess, EngineConfig(max_batch=5, max_queue=12)).start()
    try:
        for i, (p, n) in enumerate(zip(prompts, lengths)):
            eng.submit(GenRequest(p, n, stop_token_ids=(1,)), got[i].append)
        assert _wait(lambda: all(got[i] and isinstance(got[i][-1], Done) for i in got), 30)
    finally:
        eng.stop()
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        ref = generate(sess, np.asarray(p), n, eos_token_id=1)[len(p):].tolist()
        assert [e.id for e in got[i] if isinstance(e, Token)] == ref
    assert eng.active == 0 and eng.queue_depth == 0


def test_serve_page_states_targets():
    from curmoe.app.report_serve import serve_page, serve_targets

    row = lambda c, v: {"model": "dense", "runtime": "onnxruntime:cpu", "concurrency": c, "requests": 16,  # noqa: E731
                        "tok_s": v, "p50_ms": 10.0, "p99_ms": 20.0, "statuses": {"200": 16}}
    burst = {"requests": 64, "statuses": {"200": 32, "429": 32}, "unexpected": {}, "idle_after": True,
             "rss_baseline_mib": 100.0, "rss_peak_mib": 120.0, "rss_after_mib": 104.0}
    t = {"model": "dense", "runtime": "onnxruntime:cpu", "scaling_16_vs_1": 3.9, "single_tok_s": 90.0,
         "bench_decode_tok_s": 100.0, "overhead_ratio": 0.9, "burst": burst}
    data = {"rows": [row(1, 100.0), row(16, 390.0)], "targets": [t], "model": "models/wt2-moe-8x", "threads": 1,
            "load_avg_start": [9.0, 8.0, 7.0], "load_avg_end": [9.5, 8.5, 7.5]}
    met = {x["target"].split(" ")[0]: x["met"] for x in serve_targets(data)}
    assert met == {"16": False, "one": True, "64-client": True}
    t["burst"] = burst | {"rss_after_mib": 110.0}  # 10% above the baseline
    assert not serve_targets(data)[2]["met"]
    page = serve_page(data)
    assert "| 16 clients >= 4x one client (output tok/s) | dense onnxruntime:cpu | 3.90x | **missed** |" in page
    assert "Load average (1/5/15 min) 9.0/8.0/7.0" in page


class _SlowSession:
    """A stand-in runtime: one layer of KV cache, constant logits (token 5 wins), each run sleeps ``delay`` s."""

    def __init__(self, delay: float) -> None:
        from curmoe.runtimes import IOSpec

        self.delay = delay
        self.inputs = [IOSpec("input_ids", ("B", "T"), np.dtype(np.int64)),
                       IOSpec("attention_mask", ("B", "S"), np.dtype(np.int64)),
                       IOSpec("past.0.key", ("B", 1, "P", 2), np.dtype(np.float32)),
                       IOSpec("past.0.value", ("B", 1, "P", 2), np.dtype(np.float32))]

    def run(self, feeds, outputs=None):
        time.sleep(self.delay)
        B, S = feeds["attention_mask"].shape
        logits = np.zeros((B, feeds["input_ids"].shape[1], 8), np.float32)
        logits[..., 5] = 1.0
        kv = np.zeros((B, 1, S, 2), np.float32)
        return {"logits": logits, "present.0.key": kv, "present.0.value": kv}


def test_engine_timeouts_and_queue_limit():
    from curmoe.runtimes.serve import Done, Engine, EngineBusyError, EngineConfig, Failed, GenRequest

    eng = Engine(_SlowSession(0.01), EngineConfig(max_batch=1, max_queue=1, queue_timeout=0.1,  # type: ignore[arg-type]
                                                  request_timeout=0.3)).start()
    a, b = [], []
    try:
        eng.submit(GenRequest((1, 2), 1000), a.append)  # ~10 s of steps: stopped by the request timeout
        assert _wait(lambda: eng.active == 1)
        eng.submit(GenRequest((1,), 2), b.append)  # waits for the slot, past the queue timeout
        with pytest.raises(EngineBusyError, match=r"queue limit is 1 \(--max-queue 1\)") as e:
            eng.submit(GenRequest((1,), 2), lambda ev: None)
        assert e.value.status == 429
        assert _wait(lambda: a and isinstance(a[-1], (Done, Failed)) and b and isinstance(b[-1], (Done, Failed)))
    finally:
        eng.stop()
    assert a[-1].status == 503 and "--request-timeout 0.3" in a[-1].message and 5 < len(a) < 60
    assert b == [Failed(503, "queue_timeout", b[0].message)] and "--queue-timeout 0.1" in b[0].message
    with pytest.raises(EngineBusyError, match="shutting down"):
        eng.submit(GenRequest((1,), 2), lambda ev: None)
