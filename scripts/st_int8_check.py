#!/usr/bin/env python3
"""Does an int8 compute mode pay? Measures what int8 dynamic quantisation of the dense layers
gives with sentence-transformers (torch's `quantize_dynamic` on every nn.Linear, qint8 weights and
activations quantised per call, as PyTorch recommends for BERT on CPU): embedding speed against
f32 and bf16, and each text's cosine to its f32 vector. tripletlab's compute modes must stay at
cosine >= 0.9999 of f32 (issue 17's bar for a fast mode).

Usage: st_int8_check.py --model DIR --data FILE [--max-seq-len 256] [--batch-size 32]
Needs the virtual environment of scripts/compare_st.sh (torch, sentence-transformers)."""
import argparse, json, os, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import warnings

warnings.filterwarnings("ignore")
import numpy as np
import torch
from sentence_transformers import SentenceTransformer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--max-seq-len", type=int, default=256)
ap.add_argument("--batch-size", type=int, default=32)
a = ap.parse_args()

with open(a.data) as f:
    rows = json.load(f) if a.data.endswith(".json") else [json.loads(l) for l in f if l.strip()]
texts = [r[k] for r in rows for k in ("query", "pos", "negative")]


def run(model, name):
    model.max_seq_length = a.max_seq_len
    model.encode(texts[:64], batch_size=a.batch_size)
    t = time.perf_counter()
    v = model.encode(texts, batch_size=a.batch_size, normalize_embeddings=True, convert_to_numpy=True)
    dt = time.perf_counter() - t
    print(f"{name}: {len(texts) / dt:.1f} texts/s", flush=True)
    v = v.astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


f32 = run(SentenceTransformer(a.model, device="cpu"), "f32")
bf16 = run(
    SentenceTransformer(a.model, device="cpu", model_kwargs={"torch_dtype": torch.bfloat16}), "bf16"
)
q = SentenceTransformer(a.model, device="cpu")
torch.quantization.quantize_dynamic(q[0].auto_model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
i8 = run(q, "int8 dynamic")
for name, v in (("bf16", bf16), ("int8 dynamic", i8)):
    cos = (f32 * v).sum(1)
    print(
        f"{name} vs f32 over {len(texts)} texts: lowest cosine {cos.min():.6f}, "
        f"median {np.median(cos):.6f}, share below 0.9999 {np.mean(cos < 0.9999):.3f}"
    )
