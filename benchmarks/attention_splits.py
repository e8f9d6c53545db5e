"""Batch-1 decode attention time against the split count and key tile, for the Llama-3-8B heads (32 query, 8 kv,
head 128, KV blocks of 64, block tables for 1024 tokens): the figures behind `default_num_splits`.

Each setting runs over 32 layers' caches captured in one CUDA graph, as in the engine's decode step, and is
checked against the unsplit kernel.

    python benchmarks/attention_splits.py   # H200 figures are in default_num_splits' docstring
"""
import torch

from quant_kernels import bench_graph
from fastdeploy.model_executor.ops import triton_attention as ta

LAYERS, HEADS, KV_HEADS, HEAD_DIM, BLOCK, TABLE = 32, 32, 8, 128, 64, 16


def main():
    dev = torch.device("cuda")
    caches = [tuple(torch.randn(TABLE + 24, BLOCK, KV_HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
                    for _ in range(2)) for _ in range(LAYERS)]
    q = torch.randn(1, HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    qsl = torch.tensor([0, 1], dtype=torch.int32, device=dev)
    tables = torch.randperm(TABLE + 24, device=dev)[:TABLE].to(torch.int32)[None]
    scale = HEAD_DIM ** -0.5
    print("default splits:", ta.default_num_splits(1, KV_HEADS, TABLE * BLOCK, dev))
    for ctx in (128, 256, 384, 1024):
        seq = torch.tensor([ctx], dtype=torch.int32, device=dev)
        ref = ta.paged_decode(q, *caches[0], qsl, seq, tables, scale, num_splits=1).float()
        row = []
        for splits in (1, 2, 4, 8):
            for block_n in (32, 64, 128):
                def run(c, splits=splits, block_n=block_n):
                    return ta.paged_decode(q, *c, qsl, seq, tables, scale, num_splits=splits, block_n=block_n)
                err = (run(caches[0]).float() - ref).abs().max().item()
                us = bench_graph([lambda c=c: run(c) for c in caches]) * 1e6
                row.append(f"s{splits} n{block_n} {us:.2f}" + ("" if err < 2e-2 else f" WRONG ({err:.3f})"))
        print(f"ctx {ctx}: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
