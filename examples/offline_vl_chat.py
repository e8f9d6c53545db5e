# FastDeploy's offline-inference guide, the thinking-model chat example, as written there, with only
# the model name (and, offline, a local image path in place of the URL) taken from the command line.
import sys

from fastdeploy.entrypoints.llm import LLM

MODEL = sys.argv[1] if len(sys.argv) > 1 else "baidu/ERNIE-4.5-VL-28B-A3B-Paddle"
IMAGE = sys.argv[2] if len(sys.argv) > 2 else \
    "https://paddlenlp.bj.bcebos.com/datasets/paddlemix/demo_images/example2.jpg"

# 加载模型
llm = LLM(model=MODEL, tensor_parallel_size=1, max_model_len=32768, enable_mm=True,
          limit_mm_per_prompt={"image": 100}, reasoning_parser="ernie-45-vl")

outputs = llm.chat(
    messages=[
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": IMAGE}},
            {"type": "text", "text": "图中的文物属于哪个年代"}]}
    ],
    chat_template_kwargs={"enable_thinking": False})

# 输出结果
for output in outputs:
    prompt = output.prompt
    generated_text = output.outputs.text
    reasoning_text = output.outputs.reasoning_content
    print(generated_text, reasoning_text)
