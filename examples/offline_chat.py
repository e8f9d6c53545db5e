# FastDeploy's offline-inference guide, "对话接口(LLM.chat)", as written there, with only the model
# name changed (to the built-in SmolLM2; pass an ERNIE model id or path to run the original).
import sys

from fastdeploy import LLM, SamplingParams

MODEL = sys.argv[1] if len(sys.argv) > 1 else "SmolLM2-135M-Instruct"

msg1 = [
    {"role": "system", "content": "I'm a helpful AI assistant."},
    {"role": "user", "content": "把李白的静夜思改写为现代诗"},
]
msg2 = [
    {"role": "system", "content": "I'm a helpful AI assistant."},
    {"role": "user", "content": "Write me a poem about large language model."},
]
messages = [msg1, msg2]

# 采样参数
sampling_params = SamplingParams(top_p=0.95, max_tokens=6400)

# 加载模型
llm = LLM(model=MODEL, tensor_parallel_size=1, max_model_len=8192)
# 批量进行推理(llm内部基于资源情况进行请求排队、动态插入处理)
outputs = llm.chat(messages, sampling_params)

# 输出结果
for output in outputs:
    prompt = output.prompt
    generated_text = output.outputs.text
    print(generated_text)
