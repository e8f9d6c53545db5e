"""A/B of whole source trees on batch-1 decode: each tree's engine in a fresh process, the trees alternating over
rounds, so one device call compares a change against its base on the same machine (calls land on machines ~1%
apart). Per run: bench.py's batch-1 decode (ms per token, 256 tokens after 128), the captured step's replay time,
and the first greedy tokens (random weights: a change in rounding may change them).

    git archive HEAD fastdeploy benchmarks | (mkdir -p /tmp/base && tar -x -C /tmp/base)
    python benchmarks/tree_ab.py /tmp/base . --quantization wint4 --rounds 2
"""
import argparse
import os
import subprocess
import sys

RUN = """
import sys
sys.path[:0] = [{tree!r}, {tree!r} + "/benchmarks"]
import fastdeploy
assert fastdeploy.__file__.startswith({tree!r}), fastdeploy.__file__
from bench import batch1_decode, shape_dir
r = batch1_decode(shape_dir({shape!r}), {quant!r}, replay=True)
print(f"{{r['ms_per_token']:.4f}} ms/token, step replay {{r['step_replay_us']:.1f}} us, tokens {{r['tokens']}}")
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs="+", help="directories holding fastdeploy/ and benchmarks/")
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--quantization", default="wint4", help="wint8, wint4 or none")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    quant = None if args.quantization == "none" else args.quantization
    for _ in range(args.rounds):
        for tree in args.trees:
            code = RUN.format(tree=os.path.abspath(tree), shape=args.shape, quant=quant)
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            result = run.stdout.strip().splitlines()[-1] if run.returncode == 0 else \
                f"failed: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}"
            print(f"{tree} {args.shape} {args.quantization}: {result}", flush=True)


if __name__ == "__main__":
    main()
