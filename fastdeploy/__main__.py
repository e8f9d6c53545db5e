"""`python -m fastdeploy "question"`: one chat turn with a model (default: the built-in SmolLM2)."""
import argparse

from fastdeploy import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("message", nargs="*", default=["Write a haiku about the sea."])
    parser.add_argument("--model", default=None, help="path, .gguf file or hub id (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    args = parser.parse_args()
    llm = LLM(model=args.model)
    out = llm.chat([{"role": "user", "content": " ".join(args.message)}],
                   SamplingParams(temperature=args.temperature, top_p=0.95, max_tokens=args.max_tokens),
                   use_tqdm=False)[0]
    print(out.outputs.text)


if __name__ == "__main__":
    main()
