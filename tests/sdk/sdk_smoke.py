"""The README's promise, checked with the official OpenAI and Anthropic Python SDKs and curl
against a running local stack (scripts/run.sh). Reads OPENAI_BASE_URL and OPENAI_API_KEY
(the lines run.sh prints), SLUICE_STATE_DIR (its state: the access log, the key file) and
SLUICE_POOL_PORT (its first mock backend, to read what reached the GPU pool)."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import anthropic
import openai

base_url = os.environ["OPENAI_BASE_URL"]
key = os.environ["OPENAI_API_KEY"]
state = os.environ["SLUICE_STATE_DIR"]
pool_port = int(os.environ["SLUICE_POOL_PORT"])
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
gateway = base_url.rsplit("/v1", 1)[0]
EMAIL = "jane.doe@example.org"
results = []

# pool-small (mock-model's pool) is the first two backends.
SMALL_POOL = [f"http://127.0.0.1:{pool_port + i}" for i in range(2)]


def mock(method, path, body=None):
    """Call every backend of pool-small directly (never through the gateway)."""
    out = []
    for b in SMALL_POOL:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(b + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            text = r.read()
            out.append(json.loads(text) if text else None)
    return out


def upstream_requests():
    return [r for per in mock("GET", "/_mock/requests") for r in per]


def log_line(request_id):
    """The access-log line of a request (Envoy flushes it within 10 s)."""
    for _ in range(150):
        try:
            with open(os.path.join(state, "access.log")) as f:
                for line in f:
                    v = json.loads(line)
                    if v.get("request_id") == request_id:
                        return v
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {request_id}")


def create_key(*args):
    """A key from the CLI, in the stack's key file; waits for Envoy to load it."""
    out = subprocess.run(
        [os.path.join(root, "target/release/sluice"), "keys", "create", *args],
        capture_output=True, text=True, check=True,
        env={**os.environ, "SLUICE_KEY_FILE": os.path.join(state, "ecds/key-auth.json")},
    ).stdout.strip()
    probe = openai.OpenAI(base_url=base_url, api_key=out, max_retries=0)
    for _ in range(100):
        try:
            probe.models.list()
            return out
        except openai.AuthenticationError:
            time.sleep(0.1)
    raise AssertionError("the new key never started working")


def check(name, fn):
    try:
        fn()
        results.append((name, True))
        print(f"ok      {name}")
    except Exception as e:  # noqa: BLE001 - report every failure, then exit non-zero
        results.append((name, False))
        print(f"FAILED  {name}: {type(e).__name__}: {e}")


def chat():
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    r = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": "Hello"}]
    )
    assert r.choices[0].message.content, r
    assert r.usage.completion_tokens > 0, r


def chat_stream():
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    stream = client.chat.completions.create(
        model="mock-model",
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
    )
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(parts) > 3 and "".join(parts).strip(), parts


def models_and_routing():
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert {"llama-3.1-8b", "qwen-2.5-72b", "auto"} <= set(ids), ids
    # The backend sees (and echoes) the upstream model name the alias maps to.
    r = client.chat.completions.create(
        model="llama-3.1-8b", messages=[{"role": "user", "content": "Hello"}]
    )
    assert r.model == "meta-llama/Llama-3.1-8B-Instruct", r.model
    try:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "Hello"}]
        )
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
        return
    raise AssertionError("an unknown model was routed")


def wrong_key():
    client = openai.OpenAI(base_url=base_url, api_key="sk-sluice-wrong", max_retries=0)
    try:
        client.chat.completions.create(
            model="mock-model", messages=[{"role": "user", "content": "Hello"}]
        )
    except openai.AuthenticationError as e:
        assert e.status_code == 401
        assert e.body["type"] == "authentication_error", e.body
        return
    raise AssertionError("a wrong key was accepted")


def curl_without_key():
    out = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", f"{base_url}/chat/completions",
         "-H", "content-type: application/json",
         "-d", '{"model":"mock-model","messages":[{"role":"user","content":"Hello"}]}'],
        capture_output=True, text=True, check=True,
    ).stdout
    body, status = out.rsplit("\n", 1)
    assert status == "401", status
    err = json.loads(body)["error"]
    assert err["type"] == "authentication_error" and err["code"] == "missing_api_key", err


def responses_api():
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    mock("DELETE", "/_mock/requests")
    r = client.responses.with_raw_response.create(
        model="mock-model", instructions="Be brief.", input=f"My address is {EMAIL}",
        max_output_tokens=8, extra_headers={"x-request-id": "sdk-responses"})
    resp = r.parse()
    assert resp.output_text, resp
    sent = upstream_requests()
    assert len(sent) == 1 and EMAIL not in sent[0]["body"] and "[EMAIL_1]" in sent[0]["body"], sent
    line = log_line("sdk-responses")
    assert line["api"] == "responses", line
    assert int(line["prompt_tokens"]) == resp.usage.input_tokens, (line, resp.usage)
    assert int(line["completion_tokens"]) == resp.usage.output_tokens, (line, resp.usage)
    try:
        client.responses.create(model="no-such-model", input="hi")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
    else:
        raise AssertionError("an unknown model was routed")


def streamed_pii(reply):
    """Backends answer with an address cut into 3-character events, half an event a chunk."""
    mock("PUT", "/_mock/config", {"reply_text": reply, "reply_chunk": 3, "split_events": True})


def responses_stream():
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    streamed_pii(f"Write to {EMAIL} today.")
    try:
        text, final = "", None
        with client.responses.stream(model="mock-model", input="hi",
                                     extra_headers={"x-request-id": "sdk-responses-sse"}) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    text += event.delta
            final = stream.get_final_response()
        assert text == "Write to [EMAIL_1] today.", text
        assert final.output_text == text, final.output_text
        line = log_line("sdk-responses-sse")
        assert int(line["completion_tokens"]) == final.usage.output_tokens, (line, final.usage)
        assert line["usage_source"] == "backend", line
    finally:
        mock("PUT", "/_mock/config", {"reply_text": None, "reply_chunk": 4, "split_events": False})


def anthropic_messages():
    client = anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0)
    mock("DELETE", "/_mock/requests")
    r = client.messages.with_raw_response.create(
        model="mock-model", max_tokens=8, system=f"Mail {EMAIL}.",
        messages=[{"role": "user", "content": f"I am {EMAIL}"}],
        extra_headers={"x-request-id": "sdk-messages"})
    msg = r.parse()
    assert msg.content[0].text, msg
    sent = upstream_requests()
    assert len(sent) == 1 and EMAIL not in sent[0]["body"], sent
    line = log_line("sdk-messages")
    assert line["api"] == "messages", line
    assert int(line["prompt_tokens"]) == msg.usage.input_tokens, (line, msg.usage)
    assert int(line["completion_tokens"]) == msg.usage.output_tokens, (line, msg.usage)
    n = client.messages.count_tokens(model="mock-model",
                                     messages=[{"role": "user", "content": "hi there"}])
    assert n.input_tokens > 0, n


def anthropic_stream():
    client = anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0)
    streamed_pii(f"Write to {EMAIL} today.")
    try:
        with client.messages.stream(model="mock-model", max_tokens=64,
                                    messages=[{"role": "user", "content": "hi"}],
                                    extra_headers={"x-request-id": "sdk-messages-sse"}) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == "Write to [EMAIL_1] today.", text
        line = log_line("sdk-messages-sse")
        assert int(line["completion_tokens"]) == final.usage.output_tokens, (line, final.usage)
    finally:
        mock("PUT", "/_mock/config", {"reply_text": None, "reply_chunk": 4, "split_events": False})


def anthropic_errors_and_token_limit():
    bad = anthropic.Anthropic(base_url=gateway, api_key="sk-sluice-wrong", max_retries=0)
    try:
        bad.messages.create(model="mock-model", max_tokens=8,
                            messages=[{"role": "user", "content": "hi"}])
    except anthropic.AuthenticationError as e:
        assert e.body["error"]["type"] == "authentication_error", e.body
    else:
        raise AssertionError("a wrong key was accepted")
    limited = create_key("--tenant", "sdk-tpm", "--tpm", "300")
    client = anthropic.Anthropic(base_url=gateway, api_key=limited, max_retries=0)
    try:
        client.messages.create(model="mock-model", max_tokens=1000,
                               messages=[{"role": "user", "content": "hi"}])
    except anthropic.RateLimitError as e:
        assert e.body["error"]["type"] == "rate_limit_error", e.body
    else:
        raise AssertionError("a request over the token budget passed")
    oa = openai.OpenAI(base_url=base_url, api_key=limited, max_retries=0)
    passed = 0
    for _ in range(40):
        try:
            oa.responses.create(model="mock-model", input="hi", max_output_tokens=16)
            passed += 1
        except openai.RateLimitError:
            break
    else:
        raise AssertionError("the token budget never ran out")
    assert passed >= 3, passed


def engine_errors():
    """An engine's errors, as the SDKs see them: a 500 for an invalid request is a
    BadRequestError; an error inside a 200 stream (vLLM's form, and older llama.cpp's
    `error:` line, which SSE clients ignore) raises instead of ending quietly."""
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    try:
        mock("PUT", "/_mock/config", {"fail_status": 500, "fail_body": {"error": {
            "code": 500, "type": "server_error",
            "message": "image input is not supported - hint: you may need to provide the mmproj"}}})
        try:
            client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "hi"}])
        except openai.BadRequestError as e:
            assert "image input is not supported" in e.message, e.message
        else:
            raise AssertionError("an invalid request passed")
        for legacy in (False, True):
            mock("PUT", "/_mock/config", {"fail_status": None, "fail_body": None,
                                          "stream_error_after": 2, "stream_error_legacy": legacy})
            stream = client.chat.completions.create(
                model="mock-model", messages=[{"role": "user", "content": "hi"}], stream=True)
            try:
                for _ in stream:
                    pass
            except openai.APIError as e:
                assert "injected stream error" in str(e), e
            else:
                raise AssertionError(f"a failed stream ended quietly (legacy={legacy})")
    finally:
        mock("PUT", "/_mock/config", {"fail_status": None, "fail_body": None,
                                      "stream_error_after": None, "stream_error_legacy": False})


def cached_answers_replay_in_each_sdk():
    """The local stack caches requests with temperature 0: the second of each pair is a hit
    replayed in the API's own stream events, which each SDK's stream helpers must accept."""
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    ant = anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0)
    mock("DELETE", "/_mock/requests")

    def chat_once(rid):
        stream = client.chat.completions.create(
            model="mock-model", temperature=0, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "cache me"}],
            extra_headers={"x-request-id": rid})
        text, usage = "", None
        for c in stream:
            if c.choices:
                text += c.choices[0].delta.content or ""
            if c.usage:
                usage = c.usage.completion_tokens
        return text, usage

    def responses_once(rid):
        with client.responses.stream(model="mock-model", input="cache me too", temperature=0,
                                     extra_headers={"x-request-id": rid}) as s:
            text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
            final = s.get_final_response()
        return text, final.output_text, final.usage.output_tokens

    def messages_once(rid):
        with ant.messages.stream(model="mock-model", max_tokens=32, extra_body={"temperature": 0},
                                 messages=[{"role": "user", "content": "cache me as well"}],
                                 extra_headers={"x-request-id": rid}) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        return text, final.content[0].text, final.usage.output_tokens

    def embeddings_once(rid):
        r = client.embeddings.create(model="mock-model", input="the same words",
                                     extra_headers={"x-request-id": rid})
        return r.data[0].embedding

    for name, once in [("chat", chat_once), ("responses", responses_once),
                       ("messages", messages_once), ("embeddings", embeddings_once)]:
        first, second = once(f"sdk-cache-{name}-1"), once(f"sdk-cache-{name}-2")
        assert first == second and first, (name, first, second)
        stored = json.loads(log_line(f"sdk-cache-{name}-1")["cache"])
        hit = json.loads(log_line(f"sdk-cache-{name}-2")["cache"])
        assert stored["result"] == "stored" and hit["result"] == "hit", (name, stored, hit)
    sent = upstream_requests()
    assert len(sent) == 4, [r["path"] for r in sent]


check("openai SDK: chat completion", chat)
check("openai SDK: streamed chat completion", chat_stream)
check("openai SDK: model list, alias routing, unknown model -> NotFoundError", models_and_routing)
check("openai SDK: wrong key raises AuthenticationError", wrong_key)
check("curl without a key: OpenAI-shaped 401", curl_without_key)
check("openai SDK: responses.create, PII redacted upstream, usage logged as reported", responses_api)
check("openai SDK: streamed responses, PII redacted across events, usage logged", responses_stream)
check("anthropic SDK: messages.create and count_tokens, PII redacted, usage logged", anthropic_messages)
check("anthropic SDK: streamed messages, PII redacted across events, usage logged", anthropic_stream)
check("anthropic + openai SDKs: typed errors, a token limit that holds", anthropic_errors_and_token_limit)
check("openai SDK: engine errors normalised, errors inside streams raise", engine_errors)
check("openai + anthropic SDKs: cached answers replayed as each API's stream, once upstream",
      cached_answers_replay_in_each_sdk)
passed = sum(ok for _, ok in results)
print(f"sdk: {passed} passed, {len(results) - passed} failed")
sys.exit(0 if passed == len(results) else 1)
