#!/usr/bin/env python3
"""tools/check_merged.py — checks a checkpoint written by ./merge_adapter with Hugging Face
transformers itself: it loads the directory with AutoModelForCausalLM.from_pretrained, runs the
token sequences our CPU reference ran (files written by ./dump_logits), and compares the logits;
it also checks generation_config.json and, when the directory holds a tokenizer, that
apply_chat_template gives our chat template's token ids. Run it on a machine with torch,
transformers, safetensors and sentencepiece (a GPU is used when there is one; nothing is trained).

    ./merge_adapter -m llama2-7b.bin -a out/adapter.bin -t tokenizer.model -o merged/ --gguf merged.gguf
    ./dump_logits -m merged/ -t tokenizer.model -p "What is QLoRA?" -p "Hi" --system "Be brief." -o ours_merged.safetensors
    ./dump_logits -m llama2-7b.bin -a out/adapter.bin -t tokenizer.model -p "What is QLoRA?" -o ours_trained.safetensors
    python3 tools/check_merged.py --merged merged/ --ours ours_merged.safetensors --ours ours_trained.safetensors \\
                                  [--gguf merged.gguf]

Error = max |ours - transformers| / max |ours| over a sequence's logits (T, V), both in fp32.
Tolerances (--tol overrides):
  ours from the merged directory itself (model_kind hf-directory): 1e-4, the same weights on both
    sides, so only fp32 arithmetic differs (TF32 is switched off);
  ours from the model file + adapter unmerged (model_kind model-file): the merged weights were
    rounded once to the checkpoint's dtype: 1e-4 for float32, 2e-2 for float16, 5e-2 for bfloat16;
  --gguf (loaded through transformers' GGUF reader, which needs the `gguf` package; skipped
    without it), against the first --ours file: 2e-2 for f16, 5e-2 for q8_0, 0.25 for q4_0.
The 1e-4 bounds are the ones that must hold; the rounding and quantization bounds are loose
estimates, not yet measured on a real merged Llama 2 (the machine this was written on has no GPU,
and the GPU machine could not be given the merged files).
llama.cpp itself cannot be built or downloaded on the GPU machine this was written for, so the
GGUF check goes through transformers' reader only (and test/cpu_gguf.cpp checks the file).
Exit status: 0 when every check passes, 1 otherwise.
"""
import argparse
import json
import os
import sys

import torch
import transformers
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 50, "repetition_penalty": 1.2,
              "max_length": 500}
DTYPE_TOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}
GGUF_TOL = {1: ("f16", 2e-2), 7: ("q8_0", 5e-2), 2: ("q4_0", 0.25)}


def fp32_kwargs():
    """from_pretrained's fp32 argument: dtype since transformers 4.56, torch_dtype before."""
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}


def load_ours(path):
    """A ./dump_logits file: its metadata and (prompt, tokens (T), logits (T, V)) per sequence."""
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        prompts = json.loads(meta["prompts"])
        seqs = [(p, f.get_tensor(f"seq.{i}.tokens").long(), f.get_tensor(f"seq.{i}.logits").float())
                for i, p in enumerate(prompts)]
    return meta, seqs


def rel_err(ours, theirs):
    return ((ours - theirs).abs().max() / ours.abs().max()).item()


def run_logits(model, tokens, device):
    with torch.no_grad():
        return model(tokens.unsqueeze(0).to(device)).logits[0].float().cpu()  # (T, V)


class Checks:
    def __init__(self):
        self.failed = 0

    def check(self, ok, line):
        print(("ok    " if ok else "FAIL  ") + line)
        self.failed += 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description="Check a merged checkpoint against our logits with transformers.")
    ap.add_argument("--merged", required=True, help="directory written by ./merge_adapter -o")
    ap.add_argument("--ours", action="append", required=True, help="file written by ./dump_logits (repeatable)")
    ap.add_argument("--gguf", help="GGUF written by ./merge_adapter --gguf, loaded through transformers (needs `gguf`)")
    ap.add_argument("--tol", type=float, help="one tolerance for every logits comparison")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    checks = Checks()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, device {device}")

    config = json.load(open(os.path.join(args.merged, "config.json")))
    gen = GenerationConfig.from_pretrained(args.merged)
    for key, want in GENERATION.items():
        checks.check(getattr(gen, key) == want, f"generation_config {key} = {getattr(gen, key)} (want {want})")
    for key in ("bos_token_id", "eos_token_id"):
        checks.check(getattr(gen, key) == config[key], f"generation_config {key} = {getattr(gen, key)}")

    model = AutoModelForCausalLM.from_pretrained(args.merged, attn_implementation="eager", **fp32_kwargs()).to(device)
    model.eval()
    tokenizer = None
    if os.path.exists(os.path.join(args.merged, "tokenizer.model")):
        tokenizer = AutoTokenizer.from_pretrained(args.merged)

    first = None
    for path in args.ours:
        meta, seqs = load_ours(path)
        first = first or seqs
        kind = meta.get("model_kind", "model-file")
        tol = args.tol or (1e-4 if kind == "hf-directory" else DTYPE_TOL[config.get("dtype", config.get("torch_dtype"))])
        for i, (prompt, tokens, ours) in enumerate(seqs):
            if prompt and tokenizer is not None:
                messages = ([{"role": "system", "content": meta["system"]}] if meta.get("system") else []) + \
                           [{"role": "user", "content": prompt}]
                ids = tokenizer.apply_chat_template(messages, tokenize=True)
                ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
                checks.check(ids == tokens.tolist(), f"{path} seq {i}: apply_chat_template gives our {len(tokens)} token ids"
                             + ("" if ids == tokens.tolist() else f" (theirs {ids}, ours {tokens.tolist()})"))
            e = rel_err(ours, run_logits(model, tokens, device))
            checks.check(e <= tol, f"{path} seq {i} ({kind}, {len(tokens)} tokens): logits max rel err {e:.3e} (tol {tol:g})")
        if tokenizer is not None and seqs and seqs[0][0]:
            out = model.generate(seqs[0][1].unsqueeze(0).to(device), max_new_tokens=24, do_sample=False)
            print(f"      greedy continuation of {seqs[0][0]!r}: {tokenizer.decode(out[0, len(seqs[0][1]):])!r}")

    if args.gguf:
        try:
            import gguf  # noqa: F401  (transformers' GGUF loader needs it)
            ft = int(gguf.GGUFReader(args.gguf).fields["general.file_type"].parts[-1][0])
        except ImportError:
            print("skip  --gguf: the `gguf` package is not installed (pip install gguf)")
            return 1 if checks.failed else 0
        name, tol = GGUF_TOL.get(ft, ("?", 0.25))
        tol = args.tol or tol
        g = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(args.gguf)),
                                                 gguf_file=os.path.basename(args.gguf), **fp32_kwargs()).to(device)
        for i, (prompt, tokens, ours) in enumerate(first):
            e = rel_err(ours, run_logits(g, tokens, device))
            checks.check(e <= tol, f"{args.gguf} ({name}) seq {i}: logits max rel err {e:.3e} vs {args.ours[0]} (tol {tol:g})")

    print(f"{checks.failed} check(s) failed" if checks.failed else "all checks passed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
