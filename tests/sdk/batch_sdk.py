"""The batch API with the official OpenAI Python SDK, unchanged: upload, create, poll,
download the output and error files, list, cancel; and another tenant's key sees none of it.

Run by tests/tests/batch.rs against a stack with sluice-batch. Reads OPENAI_BASE_URL,
OPENAI_API_KEY (the owner), SLUICE_OTHER_KEY (another tenant) and SLUICE_BATCH_LINES.
Prints one JSON summary line for the Rust side to check against the access log."""

import io
import json
import os
import sys
import time

import openai

client = openai.OpenAI()
other = openai.OpenAI(api_key=os.environ["SLUICE_OTHER_KEY"])
n = int(os.environ.get("SLUICE_BATCH_LINES", "1000"))


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def lines(count, prefix, bad_every=0):
    out = []
    for i in range(count):
        body = {"model": "mock-model", "max_tokens": 8,
                "messages": [{"role": "user", "content": f"Say {prefix} number {i}."}]}
        if bad_every and i % bad_every == bad_every - 1:
            body["model"] = "no-such-model"  # refused by the gateway: an error-file line
        out.append(json.dumps({"custom_id": f"{prefix}-{i}", "method": "POST",
                               "url": "/v1/chat/completions", "body": body}))
    return "\n".join(out) + "\n"


def wait(batch_id, until):
    deadline = time.time() + 240
    while time.time() < deadline:
        b = client.batches.retrieve(batch_id)
        if b.status in until:
            return b
        time.sleep(0.5)
    check(False, f"batch {batch_id} reached none of {until}: {b.status} {b.request_counts}")


# Upload and create.
f = client.files.create(file=("lines.jsonl", io.BytesIO(lines(n, "req", bad_every=100).encode())),
                        purpose="batch")
check(f.purpose == "batch" and f.bytes > 0, f"file object {f}")
check(client.files.retrieve(f.id).id == f.id, "retrieve file")
batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"job": "e2e"})
check(batch.status == "validating" and batch.metadata == {"job": "e2e"}, f"created {batch}")

# Another tenant sees nothing of it.
for call in (lambda: other.files.retrieve(f.id), lambda: other.batches.retrieve(batch.id),
             lambda: other.files.content(f.id), lambda: other.batches.cancel(batch.id)):
    try:
        call()
        check(False, "another tenant reached the owner's file or batch")
    except openai.NotFoundError:
        pass
check(all(x.id != batch.id for x in other.batches.list().data), "another tenant lists the batch")

done = wait(batch.id, {"completed", "failed", "expired", "cancelled"})
check(done.status == "completed", f"status {done.status} errors {done.errors}")
bad = n // 100
check(done.request_counts.total == n and done.request_counts.completed == n - bad
      and done.request_counts.failed == bad, f"counts {done.request_counts}")
for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
    check(getattr(done, stamp), f"{stamp} missing")

output = [json.loads(l) for l in client.files.content(done.output_file_id).text.splitlines()]
errors = [json.loads(l) for l in client.files.content(done.error_file_id).text.splitlines()]
ids = [r["custom_id"] for r in output + errors]
check(len(ids) == n and len(set(ids)) == n, f"{len(ids)} records, {len(set(ids))} distinct ids")
for r in output:
    i = r["custom_id"].split("-")[1]
    body = r["response"]["body"]
    check(r["response"]["status_code"] == 200, f"output {r}")
    check(body["object"] == "chat.completion" and body["usage"]["prompt_tokens"] > 0, f"body {body}")
    check(f"number {i}" in json.dumps(body) or body["choices"], f"answer for {i}")
for r in errors:
    check(r["response"]["status_code"] == 404, f"error line {r}")

# Listing with pagination, newest first.
page = client.batches.list(limit=1)
check(page.data[0].id == batch.id, "list")
check(any(x.id == done.output_file_id for x in client.files.list().data), "output file listed")

# Cancel: a second batch, cancelled at once; every line ends in one of its files.
f2 = client.files.create(file=("more.jsonl", io.BytesIO(lines(200, "late").encode())), purpose="batch")
b2 = client.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions",
                           completion_window="24h")
cancelling = client.batches.cancel(b2.id)
check(cancelling.status in ("cancelling", "cancelled"), f"cancel {cancelling.status}")
c = wait(b2.id, {"cancelled"})
records = []
for fid in (c.output_file_id, c.error_file_id):
    if fid:
        records += [json.loads(l) for l in client.files.content(fid).text.splitlines()]
check(sorted(r["custom_id"] for r in records) == sorted(f"late-{i}" for i in range(200))
      or c.request_counts.total == 0, f"cancelled batch accounts for {len(records)} of 200")

# Refused before anything runs: a wrong endpoint, and a file of bad lines.
try:
    client.batches.create(input_file_id=f.id, endpoint="/v1/models", completion_window="24h")
    check(False, "a batch on /v1/models was accepted")
except openai.BadRequestError:
    pass
f3 = client.files.create(file=("bad.jsonl", io.BytesIO(b'{"custom_id": "x"}\nnot json\n')),
                         purpose="batch")
b3 = client.batches.create(input_file_id=f3.id, endpoint="/v1/chat/completions",
                           completion_window="24h")
failed = wait(b3.id, {"failed"})
check(failed.errors and len(failed.errors.data) == 2, f"validation errors {failed.errors}")

client.files.delete(f3.id)
try:
    client.files.retrieve(f3.id)
    check(False, "a deleted file is still there")
except openai.NotFoundError:
    pass

print(json.dumps({"batch_id": batch.id, "completed": n - bad, "failed": bad,
                  "cancelled_batch": b2.id}))
