#!/usr/bin/env python3
"""sentence-transformers side of `tripletlab bench`: the same measurements on the same model folder
and triplet file, printed as JSON with the same keys.

Usage: st_bench.py --model DIR --data FILE [--batch-size 32] [--max-seq-len 256] [--repeats 3]
                   [--embed-limit N] [--train-steps 5] [--skip-embed] [--compute f32|bf16] [--json OUT]
--compute bf16 is what a user who wants speed types: model_kwargs={"torch_dtype": torch.bfloat16}
for embedding, bf16=True (mixed precision) for training.
Needs torch, sentence-transformers, datasets and accelerate (scripts/compare_st.sh installs them)."""
import argparse, json, os, resource, statistics, sys, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import numpy as np
import torch
from sentence_transformers import SentenceTransformer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--max-seq-len", type=int, default=256)
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--embed-limit", type=int, default=0)
ap.add_argument("--train-steps", type=int, default=5)
ap.add_argument("--skip-embed", action="store_true")
ap.add_argument("--compute", choices=["f32", "bf16"], default="f32")
ap.add_argument("--json")
a = ap.parse_args()

if a.data.endswith(".jsonl"):
    rows = [json.loads(l) for l in open(a.data, encoding="utf-8") if l.strip()]
else:
    rows = json.load(open(a.data, encoding="utf-8"))
out = {"data": a.data, "model": a.model, "torch_threads": torch.get_num_threads(), "compute": a.compute,
       "torch": torch.__version__, "onednn_bf16": bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)())}
BF16 = a.compute == "bf16"
KW = {"model_kwargs": {"torch_dtype": torch.bfloat16}} if BF16 else {}

if not a.skip_embed:
    m = SentenceTransformer(a.model, device="cpu", **KW)
    m.max_seq_length = a.max_seq_len
    texts = [t for r in rows for t in (r["query"], r["pos"], r["negative"])]
    if a.embed_limit:
        texts = texts[: a.embed_limit]
    enc = lambda xs: m.encode(xs, batch_size=a.batch_size, normalize_embeddings=True, show_progress_bar=False)
    enc(texts[: max(2 * a.batch_size, 64)])
    runs = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        enc(texts)
        runs.append(time.perf_counter() - t0)
    tok = m.tokenizer(texts, truncation=True, max_length=a.max_seq_len)["input_ids"]
    tokens = sum(len(x) for x in tok)
    med = statistics.median(runs)
    out["embedding"] = {"texts": len(texts), "tokens": tokens, "seconds": runs,
                        "texts_per_sec_median": len(texts) / med, "texts_per_sec_best": len(texts) / min(runs),
                        "tokens_per_sec_median": tokens / med}
    print(f"embedding: {len(texts)} texts, median {med:.2f} s: {len(texts) / med:.1f} texts/s", file=sys.stderr)

if a.train_steps > 0:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:
        from sentence_transformers import losses
    from transformers import TrainerCallback
    import tempfile
    m = SentenceTransformer(a.model, device="cpu")
    m.max_seq_length = 128
    n = min(16 * a.train_steps, len(rows))
    ds = Dataset.from_dict({"anchor": [r["query"] for r in rows[:n]], "positive": [r["pos"] for r in rows[:n]],
                            "negative": [r["negative"] for r in rows[:n]]})

    class Rec(TrainerCallback):
        def __init__(self):
            self.secs = []
        def on_step_begin(self, *args, **kw):
            self.t = time.perf_counter()
        def on_step_end(self, *args, **kw):
            self.secs.append(time.perf_counter() - self.t)

    rec = Rec()
    with tempfile.TemporaryDirectory() as d:
        targs = SentenceTransformerTrainingArguments(output_dir=d, num_train_epochs=1, per_device_train_batch_size=16,
                                                     learning_rate=2e-5, warmup_steps=0.1, save_strategy="no",
                                                     eval_strategy="no", report_to="none", use_cpu=True,
                                                     disable_tqdm=True, logging_steps=1000, seed=42,
                                                     batch_sampler="no_duplicates", bf16=BF16)
        SentenceTransformerTrainer(model=m, args=targs, train_dataset=ds,
                                   loss=losses.MultipleNegativesRankingLoss(m), callbacks=[rec]).train()
    timed = rec.secs[1:] if len(rec.secs) > 1 else rec.secs
    out["train_step"] = {"seconds": rec.secs, "median_secs_after_first": statistics.median(timed)}
    print(f"fine-tuning: median {statistics.median(timed):.2f} s/step", file=sys.stderr)

out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
text = json.dumps(out, indent=1)
if a.json:
    open(a.json, "w").write(text)
else:
    print(text)
