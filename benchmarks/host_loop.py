"""The host's cost of a steady-state decode step, by part, on the CPU: gpu-smol-throughput is bound by it (the
device waits on the host; benchmarks/results/gpu-20261202-0440-smol-host.log), and it is the same Python here.

A 1-layer model with 16-wide layers decodes `--batch` requests that never finish; each part of the engine's
step is timed in CPU time (process_time: a shared machine's stolen time does not count), the model's forward
is subtracted from the whole, and the best of several windows of identical steps is printed.

    python benchmarks/host_loop.py --batch 256
    cd ../other-checkout && python /path/to/benchmarks/host_loop.py --root .   # another tree, to A/B
"""
import argparse
import collections
import json
import os
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40, help="steps per timed window")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                    help="the checkout whose fastdeploy is timed")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.root))
    import torch
    from fastdeploy import LLM, SamplingParams
    torch.set_num_threads(1)

    model = os.path.join(tempfile.gettempdir(), "fd-host-loop-model")
    os.makedirs(model, exist_ok=True)
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump(dict(architectures=["LlamaForCausalLM"], model_type="llama", rms_norm_eps=1e-5, hidden_size=16,
                       intermediate_size=16, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                       vocab_size=64, tie_word_embeddings=True, max_position_embeddings=4096, hidden_act="silu"), f)
    llm = LLM(model=model, load_format="dummy", skip_tokenizer_init=True, max_num_seqs=args.batch,
              max_model_len=4096, max_num_batched_tokens=8192)
    engine, runner = llm.llm_engine, llm.llm_engine.runner
    spent = collections.Counter()
    for obj, name in ((engine.scheduler, "schedule"), (engine.scheduler, "update_after_step"), (engine, "_process"),
                      (runner, "_prepare"), (runner, "_sampling_metadata"), (runner, "forward")):
        def timed(*a, _fn=getattr(obj, name), _name=name, **kw):
            t = time.process_time()
            try:
                return _fn(*a, **kw)
            finally:
                spent[_name] += time.process_time() - t
        setattr(obj, name, timed)

    params = SamplingParams(temperature=0, max_tokens=4000, ignore_eos=True)
    for i in range(args.batch):
        for req in engine.make_requests(None, [1 + (i + j) % 60 for j in range(16)], params):
            engine.output_processor.add_request(req)
            engine.scheduler.add(req)
    for _ in range(5):                  # admission and prefill; then every step is one decode row per request
        engine.step()
    best = collections.defaultdict(lambda: float("inf"))
    for _ in range(args.windows):
        spent.clear()
        t = time.process_time()
        for _ in range(args.steps):
            engine.step()
        best["host"] = min(best["host"], (time.process_time() - t - spent["forward"]) / args.steps)
        for name, s in spent.items():
            if name != "forward":
                best[name] = min(best[name], s / args.steps)
    print(f"batch {args.batch}, ms per decode step (best of {args.windows} windows of {args.steps} steps): "
          + ", ".join(f"{name} {s * 1e3:.3f}" for name, s in best.items()))


if __name__ == "__main__":
    main()
