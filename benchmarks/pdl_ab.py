"""GPU time of one captured decode step with programmatic dependent launch off and on (ops/triton_pdl.py).

CUDA-graph replays timed with events, so the host loop is out of the figure; a fresh engine per setting, since
a graph keeps the launch flags it was captured with. The greedy tokens of the run before must not change.

    python benchmarks/pdl_ab.py            # H200 figures are in triton_pdl.py's docstring
"""
from bench import dummy_llm, random_prompts, release, run_engine, shape_dir, step_us
from fastdeploy.model_executor.ops import triton_pdl

CASES = [("llama3-8b", None, 1), ("llama3-8b", "wint4", 1), ("smollm2-135m", None, 1), ("smollm2-135m", None, 64),
         ("llama3-8b", None, 32)]


def main():
    for shape, quant, batch in CASES:
        tokens = {}
        for pdl in (False, True):
            triton_pdl.ENABLED = pdl
            llm = dummy_llm(shape_dir(shape), max_num_seqs=batch, max_model_len=1024, quantization=quant)
            out = run_engine(llm, random_prompts(batch, 128, 1000, seed=3), 128)
            tokens[pdl] = [o.outputs.token_ids for o in out["outs"]]
            # the last step ran every row, so the graph's inputs are a full batch's
            us = step_us(llm.llm_engine.runner.graphs.graphs[batch][0])
            print(f"{shape} {quant or 'bf16'} batch {batch}, PDL {'on' if pdl else 'off'}: {us:.1f} us/step",
                  flush=True)
            del llm
            release()
        assert tokens[True] == tokens[False], f"{shape}: greedy tokens changed with PDL"
    triton_pdl.ENABLED = True


if __name__ == "__main__":
    main()
