# FastDeploy's offline-inference guide, the multimodal generate example, as written there, with only the
# model name (and, offline, local files in place of URLs) taken from the command line.
import io
import sys
import urllib.request

from PIL import Image

from fastdeploy.engine.sampling_params import SamplingParams
from fastdeploy.entrypoints.llm import LLM
from fastdeploy.input.ernie_tokenizer import ErnieBotTokenizer

PATH = sys.argv[1] if len(sys.argv) > 1 else "baidu/ERNIE-4.5-VL-28B-A3B-Paddle"
IMAGE = sys.argv[2] if len(sys.argv) > 2 else \
    "https://paddlenlp.bj.bcebos.com/datasets/paddlemix/demo_images/example2.jpg"


def fetch(url: str) -> bytes:
    """The guide uses requests.get(url).content; a local path works too."""
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url).read()
    with open(url, "rb") as f:
        return f.read()


tokenizer = ErnieBotTokenizer.from_pretrained(PATH)

messages = [
    {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": IMAGE}},
            {"type": "text", "text": "图中的文物属于哪个年代"}
        ]
    }
]

prompt = tokenizer.apply_chat_template(messages, tokenize=False)
images, videos = [], []
for message in messages:
    content = message["content"]
    if not isinstance(content, list):
        continue
    for part in content:
        if part["type"] == "image_url":
            url = part["image_url"]["url"]
            image_bytes = fetch(url)
            img = Image.open(io.BytesIO(image_bytes))
            images.append(img)
        elif part["type"] == "video_url":
            url = part["video_url"]["url"]
            video_bytes = fetch(url)
            videos.append({
                "video": video_bytes,
                "max_frames": 30
            })

sampling_params = SamplingParams(temperature=0.1, max_tokens=6400)
llm = LLM(model=PATH, tensor_parallel_size=1, max_model_len=32768, enable_mm=True,
          limit_mm_per_prompt={"image": 100}, reasoning_parser="ernie-45-vl")
outputs = llm.generate(prompts={
    "prompt": prompt,
    "multimodal_data": {
        "image": images,
        "video": videos
    }
}, sampling_params=sampling_params)

# 输出结果
for output in outputs:
    prompt = output.prompt
    generated_text = output.outputs.text
    reasoning_text = output.outputs.reasoning_content
    print(generated_text, reasoning_text)
