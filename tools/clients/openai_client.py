"""The official `openai` Python package against a live `iris serve`, unchanged.

usage: openai_client.py BASE_URL MODEL IMAGE EXPECTED_TEXT API_KEY

Greedy answers about IMAGE (sent as a data: URL) must equal EXPECTED_TEXT, streamed and whole;
usage must be reported; refusals must surface as the client's typed exceptions. Prints one line
per check and exits non-zero on the first failure.
"""

import base64
import sys

import openai

base, model, image, expected, key = sys.argv[1:6]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
url = "data:image/png;base64," + base64.b64encode(open(image, "rb").read()).decode()
messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is in this image?"}]}]


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)
    print("ok:", what)


models = client.models.list()
check([m.id for m in models.data] == [model], f"models.list() == [{model}]")

whole = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0, logprobs=True, top_logprobs=2)
check(whole.choices[0].message.content == expected, "non-stream greedy text equals the fixture")
check(whole.choices[0].finish_reason == "length", "finish_reason length")
check(whole.usage.completion_tokens == 16 and whole.usage.prompt_tokens > 16, f"usage {whole.usage}")
check(len(whole.choices[0].logprobs.content) == 16 and len(whole.choices[0].logprobs.content[0].top_logprobs) == 2, "logprobs with 2 alternatives")

stream = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True})
pieces, finish, usage = [], None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
check("".join(pieces) == expected, f"stream greedy text equals the fixture ({len(pieces)} chunks)")
check(len(pieces) > 1, "the answer arrived in several chunks")
check(finish == "length" and usage is not None and usage.completion_tokens == 16, "stream finish_reason and usage chunk")

try:
    client.chat.completions.create(model=model, messages=messages, temperature=7)
    check(False, "temperature 7 refused")
except openai.BadRequestError as e:
    check("temperature" in str(e), "BadRequestError names temperature")

try:
    client.chat.completions.create(model="not-this-one", messages=messages)
    check(False, "unknown model refused")
except openai.BadRequestError as e:
    check("not-this-one" in str(e), "BadRequestError names the unknown model")

try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).chat.completions.create(model=model, messages=messages)
    check(False, "wrong key refused")
except openai.AuthenticationError:
    check(True, "AuthenticationError for a wrong key")

print("openai client: all checks passed")
