"""The benchmarks' chat request: a short system prompt and a user prompt of plain prose, the
whole body about PROMPT_BYTES (default 2000) long.

    chat-body.py OUT [PROMPT_BYTES]
"""
import json
import sys

n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
text = ("You are a helpful assistant for a GPU inference platform. " * (n // 58 + 1))[:n - 100]
json.dump({"model": "mock-model", "max_tokens": 16,
           "messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": text}]}, open(sys.argv[1], "w"))
