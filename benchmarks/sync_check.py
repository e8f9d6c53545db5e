"""Counts the host-device synchronisations of steady-state engine steps (async scheduling should have one
per step: the wait for the previous step's tokens, which CUDA's sync debug mode does not flag).

    python benchmarks/sync_check.py --shape smollm2-135m --batch 8
"""
import argparse
import collections
import os
import sys
import traceback
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench import dummy_llm, random_prompts, shape_dir  # noqa: E402

from fastdeploy import SamplingParams  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    llm = dummy_llm(shape_dir(args.shape), max_num_seqs=args.batch, max_model_len=1024)
    prompts = random_prompts(args.batch, 64, 1000)
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)          # warm-up: compiles, captures
    where = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        # the innermost engine frame that made the synchronising call
        frames = [f for f in traceback.extract_stack() if "fastdeploy" in f.filename]
        where[f"{frames[-1].filename.split('fastdeploy/')[-1]}:{frames[-1].lineno} {frames[-1].line}"
              if frames else f"{filename}:{lineno}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        llm.generate(prompts, params, use_tqdm=False)
        torch.cuda.set_sync_debug_mode("default")
    print(f"{sum(where.values())} synchronising calls over {args.tokens} steps")
    for site, n in where.most_common(15):
        print(n, site)


if __name__ == "__main__":
    main()
