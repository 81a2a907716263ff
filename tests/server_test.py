#!/usr/bin/env python3
"""The server example as a client sees it, on a free loopback port: health and models; concurrent
streaming and non-streaming completions and chat completions, each equal to the same request run
alone; 400 with a JSON error for bad requests; 503 when the queue is full; a client that leaves
mid-stream frees its session at once.

usage: server_test.py SERVER_BINARY MODEL TOKENIZER"""

import http.client
import json
import subprocess
import sys
import threading
import time

TIMEOUT = 60  # seconds for any one request


def start(binary, model, tokenizer, *extra):
    proc = subprocess.Popen([binary, "-m", model, "-z", tokenizer, "--port", "0", "-c", "256", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if "listening on http://127.0.0.1:" in line:
            return proc, int(line.rsplit(":", 1)[1])
    proc.kill()
    sys.exit("server did not start: " + (proc.stderr.read() or "no output"))


def request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    conn.request(method, path, body=None if body is None else json.dumps(body) if not isinstance(body, str) else body,
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    return resp.status, data


def completion(port, path, body):
    """The text, finish_reason and usage of a request, streamed or not (a stream's usage only
    with stream_options.include_usage)."""
    if not body.get("stream"):
        status, data = request(port, "POST", path, body)
        assert status == 200, (status, data)
        r = json.loads(data)
        choice = r["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return text, choice["finish_reason"], r["usage"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    text, finish, usage, done, events = "", None, None, False, []
    for raw in resp:
        line = raw.decode().rstrip("\n")
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        if payload == "[DONE]":
            done = True
            break
        event = json.loads(payload)
        assert "error" not in event, event
        events.append(event)
        if not event["choices"]:  # stream_options.include_usage: the usage, after the finish
            assert finish is not None and "usage" not in events[-2], events[-2:]
            usage = event["usage"]
            continue
        choice = event["choices"][0]
        text += choice["delta"].get("content", "") if "delta" in choice else choice["text"]
        if choice["finish_reason"] is not None:
            finish = choice["finish_reason"]
    conn.close()
    assert done, "the stream did not end with [DONE]"
    assert len({(e["id"], e["created"]) for e in events}) == 1, "one id and time per stream"
    if "/chat/" in path:  # the role first, alone, as OpenAI sends it
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}, events[0]
    assert (usage is not None) == bool(body.get("stream_options", {}).get("include_usage")), usage
    return text, finish, usage


def check(condition, message):
    if not condition:
        sys.exit("FAIL: " + message)


def main():
    binary, model, tokenizer = sys.argv[1:4]
    proc, port = start(binary, model, tokenizer, "--sessions", "3", "--queue", "16")
    try:
        check(request(port, "GET", "/health") == (200, '{"status":"ok"}'), "health")
        status, data = request(port, "GET", "/v1/models")
        check(status == 200 and json.loads(data)["data"][0]["object"] == "model", "models: " + data)

        chat = [{"role": "system", "content": "Tell a story."}, {"role": "user", "content": "A cat"}]
        requests = [
            ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}),
            ("/v1/completions", {"prompt": "The little dog", "max_tokens": 50, "seed": 7, "stream": True,
                                 "stream_options": {"include_usage": True}}),
            ("/v1/completions", {"prompt": "Lily and Ben", "max_tokens": 30, "temperature": 0.9,
                                 "top_p": 0.9, "seed": 3, "stop": ["park", "."]}),
            ("/v1/chat/completions", {"messages": chat, "max_tokens": 40, "seed": 11}),
            ("/v1/chat/completions", {"messages": chat, "max_tokens": 40, "seed": 11, "stream": True,
                                      "stream_options": {"include_usage": True}}),
            ("/v1/completions", {"prompt": "One day", "max_tokens": 60, "temperature": 0, "stream": True,
                                 "stream_options": {"include_usage": True}}),
            ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 20, "seed": 5}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 25,
                                      "temperature": 0, "stream": True}),
        ]
        together = [None] * len(requests)

        def run(i):
            together[i] = completion(port, *requests[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        for i, (path, body) in enumerate(requests):
            alone = completion(port, path, body)
            check(together[i] == alone, f"request {i} {body}: concurrent {together[i]} != alone {alone}")
            text, finish, usage = alone
            check(finish in ("stop", "length") and text, f"request {i}: {alone}")
            if usage is not None:
                check(usage["completion_tokens"] > 0 and
                      usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], "usage")
        check(together[3][0] == together[4][0], "a chat streamed and not streamed differ")
        check(together[2][1] == "stop" or "." not in together[2][0], "stop strings")

        for body, words in [("not json", "not JSON"), ({"max_tokens": 3}, "'prompt' is required"),
                            ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
                            ({"prompt": "x", "temperature": "hot"}, "temperature"),
                            ({"prompt": "x", "n": 2}, "'n': 1"),
                            ({"prompt": "x", "stop": [1]}, "stop")]:
            status, data = request(port, "POST", "/v1/completions", body)
            check(status == 400 and words in json.loads(data)["error"]["message"], f"{body}: {status} {data}")
        status, data = request(port, "POST", "/v1/chat/completions", {"messages": [{"role": "user"}]})
        check(status == 400 and "content" in json.loads(data)["error"]["message"], data)
    finally:
        proc.kill()
        proc.wait()

    # One session and no queue: a second request while the first streams is refused with 503;
    # when the first client leaves mid-stream, its session is free for the next request at once.
    proc, port = start(binary, model, tokenizer, "--sessions", "1", "--queue", "0")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"prompt": "Once upon a time", "max_tokens": 250, "temperature": 1, "seed": 1, "stream": True}))
        resp = conn.getresponse()
        check(resp.readline().startswith(b"data: "), "first chunk")
        status, data = request(port, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
        check(status == 503 and "busy" in json.loads(data)["error"]["message"], f"503: {status} {data}")
        conn.sock.close()
        conn.close()
        deadline, status = time.time() + 10, None
        while time.time() < deadline:
            status, data = request(port, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
            if status == 200:
                break
            time.sleep(0.05)
        check(status == 200, f"the session of a client that left was not freed: {status}")
    finally:
        proc.kill()
        proc.wait()
    print("server_test: all checks passed")


if __name__ == "__main__":
    main()
