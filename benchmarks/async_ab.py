"""Async scheduling on vs off on the same GPU, interleaved (shared machines drift between runs), with the
host's share of a step: time spent queueing steps (launch), waiting for the device (collect) and the rest.

    python benchmarks/async_ab.py --shape smollm2-135m --requests 1024 --batch 256 --rounds 3
"""
import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench import dummy_llm, random_prompts, shape_dir  # noqa: E402

from fastdeploy import SamplingParams  # noqa: E402


def timed_runner(runner):
    """Wraps runner.launch / runner.collect to sum their wall time."""
    spent = {"launch": 0.0, "collect": 0.0, "steps": 0}
    for name in ("launch", "collect"):
        fn = getattr(runner, name)

        def wrapped(*args, _fn=fn, _name=name):
            t = time.perf_counter()
            try:
                return _fn(*args)
            finally:
                spent[_name] += time.perf_counter() - t
                spent["steps"] += _name == "launch"
        setattr(runner, name, wrapped)
    return spent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gc", choices=["on", "off"], default="on", help="off: no garbage collection while timed")
    args = ap.parse_args()
    engines = {mode: dummy_llm(shape_dir(args.shape), max_num_seqs=args.batch,
                               max_model_len=args.prompt_len + args.tokens + 64, max_num_batched_tokens=8192,
                               async_scheduling=mode,
                               # a fixed cache: the other engine holds GPU memory that profiling would count out
                               num_gpu_blocks_override=4 * args.batch * -(-(args.prompt_len + args.tokens) // 64))
               for mode in (True, False)}
    prompts = random_prompts(args.requests, args.prompt_len, 1000, seed=1)
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    spent = {mode: timed_runner(llm.llm_engine.runner) for mode, llm in engines.items()}
    for llm in engines.values():
        llm.generate(prompts[:16], params, use_tqdm=False)          # warm-up
    for r in range(args.rounds):
        for mode, llm in engines.items():
            s = spent[mode]
            s.update(launch=0.0, collect=0.0, steps=0)
            if args.gc == "off":
                gc.collect()
                gc.disable()
            t = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            secs = time.perf_counter() - t
            gc.enable()
            n = sum(len(o.outputs.token_ids) for o in outs)
            print(f"round {r} async={mode}: {n / secs:8.0f} out tok/s, {secs / s['steps'] * 1e3:.2f} ms/step; "
                  f"per step: launch {s['launch'] / s['steps'] * 1e3:.2f} ms, collect {s['collect'] / s['steps'] * 1e3:.2f}"
                  f" ms, rest {(secs - s['launch'] - s['collect']) / s['steps'] * 1e3:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
