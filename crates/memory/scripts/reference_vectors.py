#!/usr/bin/env python3
"""Computes reference all-MiniLM-L6-v2 sentence embeddings for tests/fixtures/minilm_reference.json.

An independent implementation of the sentence-transformers pipeline (BERT forward pass in
float64 numpy, HF `tokenizers` with truncation at 256, mean pooling, L2 normalisation), used
because sentence-transformers needs torch, too heavy to install here. Run once:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install numpy safetensors tokenizers
    /tmp/ref/bin/python crates/memory/scripts/reference_vectors.py MODEL_DIR > crates/memory/tests/fixtures/minilm_reference.json
"""
import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "the kitten sat on the mat",
    "a cat resting",
    "The quarterly revenue grew by 12 percent compared to last year.",
    "How do I reset my password?",
    "Nightshift runs background agents on a schedule and remembers what they did.",
]

erf = np.vectorize(math.erf)


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def main():
    model_dir = sys.argv[1]
    cfg = json.load(open(f"{model_dir}/config.json"))
    raw = load_file(f"{model_dir}/model.safetensors")
    w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in raw.items()}
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.enable_truncation(256)
    tok.no_padding()
    heads = cfg["num_attention_heads"]
    out = []
    for s in SENTENCES:
        ids = np.array(tok.encode(s).ids)
        n = len(ids)
        x = w["embeddings.word_embeddings.weight"][ids]
        x = x + w["embeddings.position_embeddings.weight"][:n] + w["embeddings.token_type_embeddings.weight"][0]
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg["layer_norm_eps"])
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            lin = lambda name, v: v @ w[p + name + ".weight"].T + w[p + name + ".bias"]
            q, k, v = (lin(f"attention.self.{m}", x) for m in ("query", "key", "value"))
            d = q.shape[-1] // heads
            q, k, v = (t.reshape(n, heads, d).transpose(1, 0, 2) for t in (q, k, v))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(1, 0, 2).reshape(n, heads * d)
            a = layer_norm(lin("attention.output.dense", ctx) + x, w[p + "attention.output.LayerNorm.weight"],
                           w[p + "attention.output.LayerNorm.bias"], cfg["layer_norm_eps"])
            h = lin("intermediate.dense", a)
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
            x = layer_norm(lin("output.dense", h) + a, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
                           cfg["layer_norm_eps"])
        e = x.mean(0)
        e = e / np.linalg.norm(e)
        out.append({"text": s, "vector": [round(float(f), 7) for f in e]})
    json.dump({"model": "all-MiniLM-L6-v2", "method": "numpy float64 reference (scripts/reference_vectors.py)",
               "max_tokens": 256, "sentences": out}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
