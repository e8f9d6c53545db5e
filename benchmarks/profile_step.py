"""Where a decode step's time goes: host functions (cProfile) and GPU kernels (torch.profiler).

    python benchmarks/profile_step.py --shape smollm2-135m --batch 1
    python benchmarks/profile_step.py --shape llama3-8b --quantization wint4
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench import dummy_llm, random_prompts, shape_dir  # noqa: E402

from fastdeploy import SamplingParams  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--quantization", default=None, help="wint8 or wint4")
    ap.add_argument("--prompt-len", type=int, nargs=2, default=[128, 128], help="min and max prompt length")
    args = ap.parse_args()
    llm = dummy_llm(shape_dir(args.shape), max_num_seqs=max(args.batch, 1), max_model_len=2048,
                    max_num_batched_tokens=8192, quantization=args.quantization)
    lo, hi = args.prompt_len
    prompts = random_prompts(args.batch, list(range(lo, hi + 1)), 1000)
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    for attempt in ("first", "second"):
        t = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        secs = time.perf_counter() - t
        print(f"{args.shape} batch {args.batch}, {attempt} run: {secs / args.tokens * 1000:.3f} ms per step "
              f"(prefill included), {args.batch * args.tokens / secs:.0f} output tok/s")

    prof = cProfile.Profile()
    prof.enable()
    llm.generate(prompts, params, use_tqdm=False)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
