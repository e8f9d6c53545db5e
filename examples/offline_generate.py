# FastDeploy's offline-inference guide, "续写接口(LLM.generate)", as written there, with only the model
# name changed (to the built-in SmolLM2; pass an ERNIE model id or path to run the original).
import sys

from fastdeploy import LLM, SamplingParams

MODEL = sys.argv[1] if len(sys.argv) > 1 else "SmolLM2-135M-Instruct"

prompts = [
    "User: 帮我写一篇关于深圳文心公园的500字游记和赏析。\nAssistant: 好的。"
]

# 采样参数
sampling_params = SamplingParams(top_p=0.95, max_tokens=6400)

# 加载模型
llm = LLM(model=MODEL, tensor_parallel_size=1, max_model_len=8192)

# 批量进行推理(llm内部基于资源情况进行请求排队、动态插入处理)
outputs = llm.generate(prompts, sampling_params)

# 输出结果
for output in outputs:
    prompt = output.prompt
    generated_text = output.outputs.text
    print(generated_text)
