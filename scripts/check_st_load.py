#!/usr/bin/env python3
"""Checks that a model folder saved by `tripletlab finetune` loads in Python sentence-transformers and
gives the same embeddings as tripletlab (cosine >= 0.9999 per text).

Usage: check_st_load.py MODEL_DIR [TRIPLETLAB_BINARY]
Skips (exit 0, with a message) when sentence-transformers is not installed; exits 1 on a mismatch.
"""
import json, os, subprocess, sys, tempfile

try:
    import numpy as np
    from sentence_transformers import SentenceTransformer
except ImportError as e:  # pragma: no cover
    print(f"SKIPPED: {e} (pip install sentence-transformers to run this check)")
    sys.exit(0)

model_dir = sys.argv[1]
binary = sys.argv[2] if len(sys.argv) > 2 else "tripletlab"
texts = [
    "A rotor blade for a wind turbine with a serrated trailing edge.",
    "Method of encrypting data packets in a wireless network.",
    "A lithium battery cathode coating with a conductive polymer layer that reduces impedance.",
    "Pharmaceutical composition comprising an antibody against PD-1.",
    "A bicycle frame made of carbon fibre composite",
    "A stepladder includes first and second legs and a plurality of treads.",
]
m = SentenceTransformer(model_dir, device="cpu")
st = m.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
with tempfile.TemporaryDirectory() as d:
    data = os.path.join(d, "t.jsonl")
    with open(data, "w") as f:
        for t in texts:  # each text as query, pos and negative: the .npy rows 0..n are the queries
            f.write(json.dumps({"query": t, "pos": t + " (document)", "negative": t + " (other)"}) + "\n")
    out = os.path.join(d, "e.npy")
    subprocess.run([binary, "embed", "--data", data, "--model", model_dir, "--prompts", "none",
                    "--max-seq-len", str(m.max_seq_length), "--no-cache", "--out", out], check=True)
    ours = np.load(out)[: len(texts)]
cos = (ours * st).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(st, axis=1))
print("sentence-transformers", __import__("sentence_transformers").__version__, "max_seq_length", m.max_seq_length)
print("cosine per text:", " ".join(f"{c:.6f}" for c in cos))
if cos.min() < 0.9999:
    print("MISMATCH")
    sys.exit(1)
print("OK: the saved folder loads in sentence-transformers and matches tripletlab (min cosine %.6f)" % cos.min())
