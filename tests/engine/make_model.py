"""Write a tiny random-weight Llama model around a real vocabulary, for end-to-end tests.

The vocabulary (tokens, merges, pre-tokenizer) is copied from one of the vocabulary-only
GGUFs llama.cpp ships (models/ggml-vocab-*.gguf), so the engine tokenizes exactly as the
real model family does; the weights are random and small, so llama-server generates
hundreds of tokens per second on two CPU cores. Output is noise in that vocabulary.

Variants:
  plain  any non-special token may follow any other
  cjk    the output layer favours tokens that are CJK ideographs, so a stream's text has
         no ASCII spaces (the case a word-based stream hold-back stalls on)

Special tokens are never sampled in either variant: a generation ends at max_tokens (or
the context), which makes token counts in tests predictable.
"""

import argparse

import gguf
import numpy as np

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_LAYER = 2
N_FF = 128
N_CTX_TRAIN = 8192

# Llama 3 Instruct's chat template (the vocabulary is Llama 3's): what a real
# Llama-3.x-Instruct GGUF carries, so prompts are formatted, and counted, as in production.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
EOT_ID = 128009  # <|eot_id|>, the end-of-turn token Instruct models stop on


def byte_decoder():
    """GPT-2's byte-level BPE alphabet, reversed: token characters back to bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_text(token, dec):
    try:
        return bytes(dec[ch] for ch in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None


def is_cjk(text):
    return bool(text) and all("\u4e00" <= ch <= "\u9fff" or "\u3040" <= ch <= "\u30ff" for ch in text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--variant", choices=["plain", "cjk"], required=True)
    # The vocabulary's family: its end-of-turn token and whether prompts start with BOS
    # (the chat template is the Llama 3 one either way; tests pass their own).
    ap.add_argument("--family", choices=["llama3", "qwen2", "gemma4"], default="llama3")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    reader = gguf.GGUFReader(args.vocab)
    fields = reader.fields
    tokens = [str(bytes(fields["tokenizer.ggml.tokens"].parts[i]), "utf-8") for i in fields["tokenizer.ggml.tokens"].data]
    token_types = [int(fields["tokenizer.ggml.token_type"].parts[i][0]) for i in fields["tokenizer.ggml.token_type"].data]
    merges = [str(bytes(fields["tokenizer.ggml.merges"].parts[i]), "utf-8") for i in fields["tokenizer.ggml.merges"].data]
    pre = fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else None
    model = fields["tokenizer.ggml.model"].contents()
    scores = (
        [float(fields["tokenizer.ggml.scores"].parts[i][0]) for i in fields["tokenizer.ggml.scores"].data]
        if "tokenizer.ggml.scores" in fields
        else None
    )
    bos = int(fields["tokenizer.ggml.bos_token_id"].contents())
    n_vocab = len(tokens)

    rng = np.random.default_rng(20261201 if args.variant == "plain" else 20261202)
    head_dim = N_EMBD // N_HEAD

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name(f"tiny-{args.family}-{args.variant}")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    if scores is not None:
        w.add_token_scores(scores)
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    if args.family == "llama3":
        w.add_eos_token_id(EOT_ID)
        w.add_add_bos_token(True)
    elif args.family == "gemma4":
        w.add_eos_token_id(tokens.index("<turn|>"))
        w.add_add_bos_token(True)
    else:
        w.add_eos_token_id(tokens.index("<|im_end|>"))
        w.add_add_bos_token(False)
    w.add_chat_template(LLAMA3_TEMPLATE)

    def f32(a):
        return np.ascontiguousarray(a, dtype=np.float32)

    # Embeddings carry a constant first dimension, so the final norm's output has a large,
    # positive first component; the output layer steers sampling through that component.
    embd = rng.normal(0.0, 0.02, (n_vocab, N_EMBD))
    embd[:, 0] = 1.0
    w.add_tensor("token_embd.weight", f32(embd))
    w.add_tensor("output_norm.weight", f32(np.ones(N_EMBD)))

    dec = byte_decoder()
    special = np.array([t != 1 for t in token_types])  # 1 = normal token
    bias = np.zeros(n_vocab)
    bias[special] = -8.0
    if args.variant == "cjk":
        cjk = np.array([is_cjk(token_text(t, dec)) if not s else False for t, s in zip(tokens, special)])
        bias[cjk] = 8.0
    out = rng.normal(0.0, 1.0, (n_vocab, N_EMBD))
    out[:, 0] = bias
    w.add_tensor("output.weight", f32(out))

    for i in range(N_LAYER):
        small = lambda *shape: f32(rng.normal(0.0, 0.02, shape))  # noqa: E731
        w.add_tensor(f"blk.{i}.attn_norm.weight", f32(np.ones(N_EMBD)))
        w.add_tensor(f"blk.{i}.attn_q.weight", small(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_k.weight", small(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_v.weight", small(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_output.weight", small(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", f32(np.ones(N_EMBD)))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", small(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_up.weight", small(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_down.weight", small(N_EMBD, N_FF))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
