import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from omniphi.cli import main
from omniphi.data.generate import ChatClient, GenerateError, chat_url, generate_corpus, read_prompts


def ok(prompt: str, n: int) -> httpx.Response:
    return httpx.Response(200, json={
        "id": f"c{n}", "object": "chat.completion", "model": "fake-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f" story {n} for: {prompt} "},
                     "finish_reason": "stop"}],
    })


class Fake:
    """MockTransport handler: a scripted list of status codes to answer first, then 200s."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append((request, body))
        if self.script:
            status = self.script.pop(0)
            return httpx.Response(status, json={"error": {"message": f"scripted {status}", "type": "x"}})
        return ok(body["messages"][-1]["content"], len(self.requests))


def client(fake, **kw):
    return ChatClient(endpoint="http://fake:1/v1", model="m", transport=httpx.MockTransport(fake),
                      sleep=lambda s: None, **kw)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_chat_url():
    assert chat_url("http://h:11434") == "http://h:11434/v1/chat/completions"
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("https://x/v1/chat/completions") == "https://x/v1/chat/completions"
    with pytest.raises(ValueError):
        chat_url("h:8000")


def test_writes_and_resumes(tmp_path):
    out = tmp_path / "corpus.jsonl"
    fake = Fake()
    c = client(fake, api_key="sk-test", temperature=0.7, max_tokens=64, system="Write for children.")
    stats = generate_corpus(c, ["a cat", "a dog"], out, n_per_prompt=2)
    assert stats == {"written": 4, "already": 0, "empty": 0}
    rows = lines(out)
    assert Counter_of(rows) == {"a cat": 2, "a dog": 2}
    assert rows[0]["model"] == "fake-1" and rows[0]["text"].startswith("story")  # stripped
    request, body = fake.requests[0]
    assert request.url == "http://fake:1/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert body["messages"][0] == {"role": "system", "content": "Write for children."}
    assert body["temperature"] == 0.7 and body["max_tokens"] == 64 and body["model"] == "m"

    # Resume: a torn last line is dropped, only the missing answers are asked for.
    with open(out, "a") as f:
        f.write('{"text": "half', )
    fake2 = Fake()
    stats = generate_corpus(client(fake2), ["a cat", "a dog", "a fox"], out, n_per_prompt=3)
    assert stats["already"] == 4 and stats["written"] == 5 and len(fake2.requests) == 5
    assert Counter_of(lines(out)) == {"a cat": 3, "a dog": 3, "a fox": 3}
    assert generate_corpus(client(Fake()), ["a cat"], out, n_per_prompt=3)["written"] == 0


def Counter_of(rows):
    from collections import Counter
    return dict(Counter(r["prompt"] for r in rows))


def test_retries_429_and_5xx_then_succeeds(tmp_path):
    fake = Fake(script=[429, 503, 500])
    delays = []
    c = ChatClient(endpoint="http://fake:1", model="m", transport=httpx.MockTransport(fake), sleep=delays.append, backoff=0.5)
    generate_corpus(c, ["p"], tmp_path / "o.jsonl")
    assert len(fake.requests) == 4 and len(lines(tmp_path / "o.jsonl")) == 1
    assert 0.5 <= delays[0] <= 0.63 and 1.0 <= delays[1] <= 1.25 and 2.0 <= delays[2] <= 2.5  # exponential


def test_retry_after_header_is_honoured():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"message": "slow down"}})
        return ok("p", 1)

    delays = []
    c = ChatClient(endpoint="http://fake:1", model="m", transport=httpx.MockTransport(handler), sleep=delays.append)
    assert c.complete("p")[0] == "story 1 for: p"
    assert delays == [3.0]


def test_gives_up_with_one_line_errors(tmp_path):
    c = client(Fake(script=[429] * 10), max_retries=2)
    with pytest.raises(GenerateError, match=r"^HTTP 429 from http://fake:1/v1/chat/completions after 3 attempts: scripted 429$"):
        generate_corpus(c, ["p"], tmp_path / "o.jsonl")
    fake = Fake(script=[404])
    with pytest.raises(GenerateError, match="HTTP 404 .*scripted 404"):
        generate_corpus(client(fake), ["p", "q", "r"], tmp_path / "o.jsonl")

    def refuse(request):
        raise httpx.ConnectError("Connection refused")

    c = ChatClient(endpoint="http://fake:1", model="m", transport=httpx.MockTransport(refuse), sleep=lambda s: None, max_retries=1)
    with pytest.raises(GenerateError, match="cannot reach .*Connection refused"):
        c.complete("p")


def test_concurrency_writes_every_answer(tmp_path):
    out = tmp_path / "o.jsonl"
    prompts = [f"prompt {i}" for i in range(30)]
    generate_corpus(client(Fake(script=[503, 429])), prompts, out, n_per_prompt=2, concurrency=4)
    assert Counter_of(lines(out)) == {p: 2 for p in prompts}


def test_read_prompts(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("  one  \n\ntwo\none\n")
    assert read_prompts(p) == ["one", "two"]
    with pytest.raises(ValueError, match="not found"):
        read_prompts(tmp_path / "none.txt")


# --------------------------------------------------------------------------- end to end


class Handler(BaseHTTPRequestHandler):
    hits = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.hits.append((self.path, body))
        if len(Handler.hits) == 1:  # first request: rate limited
            self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})
            return
        prompt = body["messages"][-1]["content"]
        self._send(200, {"model": body["model"], "choices": [{"message": {"role": "assistant", "content": f"A tale of {prompt}."}}]})

    def _send(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.hits = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_cli_against_a_local_server(server, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("dragons\nrobots\n")
    out = tmp_path / "corpus.jsonl"
    args = ["data", "generate", "--endpoint", server + "/v1", "--model", "tiny", "--prompts", str(prompts),
            "--out", str(out), "--n-per-prompt", "2", "--concurrency", "2"]
    assert main(args) == 0
    assert "wrote 4 samples" in capsys.readouterr().out
    assert len(Handler.hits) == 5  # one 429 retried
    assert {(r["prompt"], r["text"], r["model"]) for r in lines(out)} == {
        ("dragons", "A tale of dragons.", "tiny"), ("robots", "A tale of robots.", "tiny")}
    assert Handler.hits[0][0] == "/v1/chat/completions"
    assert main(args) == 0  # resumed: nothing left to do
    assert "wrote 0 samples" in capsys.readouterr().out and len(Handler.hits) == 5


def test_cli_bad_inputs(tmp_path, capsys):
    base = ["data", "generate", "--model", "m", "--out", str(tmp_path / "o.jsonl")]
    assert main(base + ["--endpoint", "http://127.0.0.1:9", "--prompts", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err == f"omniphi data generate: error: prompts file not found: {tmp_path / 'missing.txt'}\n"
    (tmp_path / "p.txt").write_text("x\n")
    assert main(base + ["--endpoint", "ftp://nowhere", "--prompts", str(tmp_path / "p.txt")]) == 2
    assert "http(s) URL" in capsys.readouterr().err
    # Nothing listens on port 9: a one-line failure, exit 1.
    assert main(base + ["--endpoint", "http://127.0.0.1:9", "--prompts", str(tmp_path / "p.txt"), "--max-retries", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach http://127.0.0.1:9/v1/chat/completions" in err
