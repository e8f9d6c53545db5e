"""gpu-8b-throughput's requests through the engine's real scheduler and block manager, with each step costed by a
model of the GPU instead of run on one: the ceiling this schedule allows when every kernel runs at a given
efficiency. Runs on the CPU in seconds, so a scheduling change can be judged without a GPU.

    python benchmarks/schedule_model.py                          # H200 figures (4.2 TB/s, 790 TFLOP/s)
    python benchmarks/schedule_model.py --bandwidth 3.0e12 --matmul-eff 0.8 --max-num-batched-tokens 4096

A step's kernels run one after another, as in the engine: the linears take the longer of reading the weights
and their FLOPs (decode steps of 256 rows are FLOP-bound too), then attention reads each decode row's KV cache
and computes each prefill chunk's causal scores. bench.py's floor lets the decode phase's KV reads overlap
its FLOPs, which sequential kernels cannot, so its floor lies above this model's ceiling.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from bench import SHAPES, param_bytes, random_prompts  # noqa: E402

from fastdeploy import SamplingParams  # noqa: E402
from fastdeploy.engine.block_manager import BlockManager  # noqa: E402
from fastdeploy.engine.request import Request  # noqa: E402
from fastdeploy.engine.scheduler import Scheduler  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bandwidth", type=float, default=4.2e12, help="bytes/s")
    ap.add_argument("--matmul", type=float, default=790e12, help="bf16 FLOP/s")
    ap.add_argument("--matmul-eff", type=float, default=0.9, help="fraction of --matmul the linears reach")
    ap.add_argument("--bandwidth-eff", type=float, default=0.9, help="fraction of --bandwidth weights and KV reach")
    ap.add_argument("--attention-eff", type=float, default=0.5, help="fraction of --matmul prefill attention reaches")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--num-blocks", type=int, default=12800, help="KV blocks of 64 (an H200 holds about this many)")
    args = ap.parse_args()

    s = SHAPES["llama3-8b"]
    h, layers, vocab = s["hidden_size"], s["num_hidden_layers"], s["vocab_size"]
    _, weight_bytes = param_bytes("llama3-8b")
    body = weight_bytes // 2 - vocab * h                # parameters a token passes through below the LM head
    kv_bytes_per_token = 2 * layers * s["num_key_value_heads"] * (h // s["num_attention_heads"]) * 2
    bandwidth, matmul = args.bandwidth * args.bandwidth_eff, args.matmul * args.matmul_eff

    scheduler = Scheduler(BlockManager(args.num_blocks, 64), args.max_num_seqs, args.max_num_batched_tokens)
    params = SamplingParams(temperature=0, max_tokens=256, ignore_eos=True)
    # the workload's prompts (bench.throughput_8b)
    for i, prompt in enumerate(random_prompts(1000, list(range(256, 1025)), vocab, seed=0)):
        scheduler.add(Request(request_id=str(i), prompt=None, prompt_token_ids=prompt, sampling_params=params,
                              max_tokens=256))
    seconds = dict(linears=0.0, decode_attention=0.0, prefill_attention=0.0)
    steps = dict(decode=0, mixed=0, prefill=0)
    out_tokens = 0
    while scheduler.has_unfinished():
        scheduled = scheduler.schedule().scheduled
        tokens = sum(x.num_new_tokens for x in scheduled)
        sampled = sum(x.samples for x in scheduled)
        flop = 2 * body * tokens + 2 * vocab * h * sampled
        seconds["linears"] += max(weight_bytes / bandwidth, flop / matmul)
        decodes = [x for x in scheduled if x.num_new_tokens == 1]
        chunks = [x for x in scheduled if x.num_new_tokens > 1]
        seconds["decode_attention"] += sum(x.request.num_computed_tokens + 1 for x in decodes) * kv_bytes_per_token / bandwidth
        # q.k and p.v: 4 h FLOPs per query and visible key and layer; a chunk's queries see half of it on average
        seconds["prefill_attention"] += sum(
            4 * h * layers * x.num_new_tokens * (x.request.num_computed_tokens + x.num_new_tokens / 2)
            for x in chunks) / (args.matmul * args.attention_eff)
        steps["decode" if not chunks else "mixed" if decodes else "prefill"] += 1
        scheduler.update_after_step(scheduled)
        for x in scheduled:
            if x.samples:
                x.request.output_token_ids.append(0)
                out_tokens += 1
                if len(x.request.output_token_ids) == x.request.max_tokens:
                    scheduler.finish(x.request)
    total = sum(seconds.values())
    print(f"{out_tokens / total:.0f} out tok/s ({total:.1f} s); steps {steps}; "
          + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
