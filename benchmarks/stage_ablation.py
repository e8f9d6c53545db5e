"""The marginal cost of each stage of a batch-1 decode step: the step's CUDA-graph replay time with one stage
replaced by nothing (a linear's output a zero tensor made once, a norm or attention passing its input through),
against the whole step. Timing only: the outputs are garbage. Where kernels overlap (PDL), this is what removing
or fusing a stage can gain, which a kernel timed alone does not tell.

    python benchmarks/stage_ablation.py [--shape llama3-8b] [--quantization wint4] [--stages "no norms;no o"]
"""
import argparse

import torch

from bench import dummy_llm, random_prompts, release, run_engine, shape_dir, step_us
from fastdeploy.model_executor.layers import attention, linear, norm

_ZEROS: dict = {}


def _zeros(*shape, dtype, device) -> torch.Tensor:
    """A zero tensor made once per shape, so the stage it stands for launches no kernel in the captured step."""
    if (shape, dtype) not in _ZEROS:
        _ZEROS[shape, dtype] = torch.zeros(*shape, dtype=dtype, device=device)
    return _ZEROS[shape, dtype]


def _skip_linears(pred):
    forward, silu_and_mul = linear.Linear.forward, linear.GateUpLinear.silu_and_mul

    def skipped_forward(self, x):
        return _zeros(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device) if pred(self) \
            else forward(self, x)

    def skipped_silu_and_mul(self, x):
        return _zeros(*x.shape[:-1], self.out_features // 2, dtype=x.dtype, device=x.device) if pred(self) \
            else silu_and_mul(self, x)
    return {(linear.Linear, "forward"): skipped_forward,
            (linear.GateUpLinear, "silu_and_mul"): skipped_silu_and_mul}


def _is_o(m):
    return isinstance(m, linear.RowParallelLinear) and m.in_features == m.out_features


def _is_down(m):
    return isinstance(m, linear.RowParallelLinear) and m.in_features > m.out_features


STAGES = {
    "whole step": {},
    "no norms": {(norm.RMSNorm, "forward"): lambda self, x, residual=None: x if residual is None else (x, residual)},
    "no rotary and K/V store": {(attention, "apply_rotary_and_store_kv"): lambda q, *args: q},
    "no attention kernel": {(attention.ops, "paged_attention"): lambda q, *args: q},
    "no qkv": _skip_linears(lambda m: isinstance(m, linear.QKVLinear)),
    "no o": _skip_linears(_is_o),
    "no gate_up": _skip_linears(lambda m: isinstance(m, linear.GateUpLinear)),
    "no down": _skip_linears(_is_down),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--quantization", default="wint4", help="wint8, wint4 or none")
    ap.add_argument("--stages", default=";".join(STAGES), help="';'-separated")
    args = ap.parse_args()
    quant = None if args.quantization == "none" else args.quantization
    for name in args.stages.split(";"):
        saved = {(owner, attr): getattr(owner, attr) for owner, attr in STAGES[name]}
        for (owner, attr), fn in STAGES[name].items():
            setattr(owner, attr, fn)
        try:
            llm = dummy_llm(shape_dir(args.shape), max_num_seqs=1, max_model_len=1024, quantization=quant)
            run_engine(llm, random_prompts(1, 128, 1000), 64)
            us = step_us(llm.llm_engine.runner.graphs.graphs[1][0])
            print(f"{args.shape} {args.quantization} {name}: step replay {us:.1f} us", flush=True)
            del llm
            release()
        finally:
            for (owner, attr), fn in saved.items():
                setattr(owner, attr, fn)


if __name__ == "__main__":
    main()
