"""The README's promise, checked with the official OpenAI Python SDK and curl against a
running local stack (scripts/run.sh). Reads OPENAI_BASE_URL and OPENAI_API_KEY."""

import json
import os
import subprocess
import sys

import openai

base_url = os.environ["OPENAI_BASE_URL"]
key = os.environ["OPENAI_API_KEY"]
results = []


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


check("openai SDK: chat completion", chat)
check("openai SDK: streamed chat completion", chat_stream)
check("openai SDK: model list, alias routing, unknown model -> NotFoundError", models_and_routing)
check("openai SDK: wrong key raises AuthenticationError", wrong_key)
check("curl without a key: OpenAI-shaped 401", curl_without_key)
passed = sum(ok for _, ok in results)
print(f"sdk: {passed} passed, {len(results) - passed} failed")
sys.exit(0 if passed == len(results) else 1)
