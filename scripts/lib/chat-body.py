"""The benchmarks' chat request: a short system prompt and a user prompt of plain prose, the
whole body about PROMPT_BYTES (default 2000) long.

    chat-body.py OUT [PROMPT_BYTES [MODEL]]

MODEL (default mock-model) names the model, for gateways that spell it their own way.
"""
import json
import sys

n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
text = ("You are a helpful assistant for a GPU inference platform. " * (n // 58 + 1))[:n - 100]
model = sys.argv[3] if len(sys.argv) > 3 else "mock-model"
json.dump({"model": model, "max_tokens": 16,
           "messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": text}]}, open(sys.argv[1], "w"))
