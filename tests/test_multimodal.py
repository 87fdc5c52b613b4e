"""Images through the OpenAI chat API (base64 data URL) to tiny LLaVA-1.5 and
Phi-3.5-vision models served by ``vllm serve`` in CPU mode, compared with the HF reference
on the same image: the expanded prompt ids, greedy tokens and logprobs (float32).

LLaVA's reference is transformers' LlavaForConditionalGeneration on the same directory.
Phi-3.5-vision has no transformers implementation and its Hub code is not available offline;
the reference is tests/fixtures/tiny_vlm.phi3v_image_embeddings (transformers CLIP + the HD
merge written from the model description) feeding transformers' Phi3ForCausalLM.

The vision encoder's attention: the platform returns TORCH_SDPA from get_vit_attn_backend;
vLLM's CLIP (used by both models) builds MultiHeadAttention from it. The server log must
show that backend, and test_vit_attention_runs_sdpa_on_the_plugin_device runs the layer on
the plugin's device against a plain softmax-attention reference.

Phi-3.5-vision: vLLM fixes its vision tower to full-size CLIP ViT-L/14-336, so each image
costs ~0.4 TFLOP per 336x336 crop. The default test uses ``num_crops=1`` (2 crops: global
view + 1 tile); the ``slow`` one uses the model's default 4 on a 2:1 image (1x2 tiles).
"""

from __future__ import annotations

import base64
import io
import json
from contextlib import contextmanager

import pytest
import torch

from tests.fixtures.hf_reference import HFGeneration, assert_greedy_close

MAX_NEW_TOKENS = 16
TIE_MARGIN = 0.02
LOGPROB_TOL = 5e-3
NUM_LOGPROBS = 5
QUESTION = "What is in the image?"
SDPA_LOG_LINE = "MultiHeadAttention attn_backend: _Backend.TORCH_SDPA"


def _image(width: int, height: int, seed: int = 0):
    """A deterministic synthetic picture (shapes on a gradient), no downloads."""
    from PIL import Image, ImageDraw

    g = torch.Generator().manual_seed(seed)
    grad = torch.linspace(0, 255, width).repeat(height, 1)
    rgb = torch.stack([grad, grad.flip(1), torch.full_like(grad, 90.0)], -1).to(torch.uint8)
    img = Image.fromarray(rgb.numpy(), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = (torch.rand(2, generator=g) * torch.tensor([width, height]) * 0.6).tolist()
        w, h = (torch.rand(2, generator=g) * torch.tensor([width, height]) * 0.4 + 4).tolist()
        color = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=g))
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=color)
    return img


def _data_url(img) -> tuple[str, bytes]:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    png = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(png).decode(), png


# ----------------------------------------------------------------------------- server


@contextmanager
def _serve(model: str, *args: str):
    from tests.fixtures.server import serve

    with serve(model, "--dtype", "float32", "--max-model-len", "1024",
               "--max-num-seqs", "4", "--seed", "0",
               "--limit-mm-per-prompt", json.dumps({"image": 1}),
               "--kv-cache-memory-bytes", str(64 << 20), *args) as (base, log):
        yield base, log


def _chat_with_image(base: str, model: str, data_url: str) -> dict:
    """One greedy chat completion with an image; returns prompt ids, output ids and
    per-step {token id: logprob} (top NUM_LOGPROBS, plus the chosen token)."""
    from openai import OpenAI

    client = OpenAI(base_url=base + "/v1", api_key="unused", timeout=1800, max_retries=0)
    resp = client.chat.completions.create(
        model=model, temperature=0.0, max_tokens=MAX_NEW_TOKENS, logprobs=True,
        top_logprobs=NUM_LOGPROBS,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "text", "text": QUESTION}]}],
        extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True,
                    "return_token_ids": True})
    choice = resp.choices[0]

    def tid(token: str) -> int:
        assert token.startswith("token_id:"), token
        return int(token[len("token_id:"):])

    steps = []
    for entry in choice.logprobs.content:
        top = {tid(t.token): t.logprob for t in entry.top_logprobs}
        top[tid(entry.token)] = entry.logprob
        steps.append(top)
    return {"prompt_ids": list(resp.prompt_token_ids),
            "output_ids": [tid(e.token) for e in choice.logprobs.content],
            "token_ids": list(choice.token_ids), "logprobs": steps}


# ----------------------------------------------------------------------------- reference


def _hf_greedy_from(model, first_inputs: dict, prompt_ids: list[int]) -> HFGeneration:
    """Greedy decoding whose first forward takes ``first_inputs`` (pixel values or
    inputs_embeds), then one token at a time with the KV cache."""
    gen = HFGeneration(prompt_ids=prompt_ids)
    with torch.inference_mode():
        out = model(**first_inputs, use_cache=True)
        for _ in range(MAX_NEW_TOKENS):
            tok = gen.append_greedy_step(out.logits[0, -1], NUM_LOGPROBS)
            out = model(input_ids=torch.tensor([[tok]]), past_key_values=out.past_key_values,
                        use_cache=True)
    return gen


def _check(got: dict, ref: HFGeneration) -> None:
    assert got["output_ids"] == got["token_ids"]
    assert_greedy_close([ref], [got["output_ids"]], tie_margin=TIE_MARGIN)
    compared = 0
    for step, (hf_tok, tok) in enumerate(zip(ref.output_ids, got["output_ids"], strict=True)):
        if hf_tok != tok:
            break
        for t, hf_lp in ref.top_logprobs[step].items():
            if t in got["logprobs"][step]:
                assert abs(got["logprobs"][step][t] - hf_lp) < LOGPROB_TOL, (step, t)
        compared += 1
    assert compared >= 0.9 * MAX_NEW_TOKENS, compared


def _hf_llava(model_dir, png: bytes) -> HFGeneration:
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    # vLLM's placement for a string-content chat template: image placeholder, newline, text.
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"<image>\n{QUESTION}"}], tokenize=False,
        add_generation_prompt=True)
    inputs = processor(text=text, images=Image.open(io.BytesIO(png)), return_tensors="pt",
                       add_special_tokens=False)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    return _hf_greedy_from(model.eval(), dict(inputs), inputs["input_ids"][0].tolist())


def _hf_phi3v(model_dir, lm_dir, png: bytes, num_crops: int) -> HFGeneration:
    from PIL import Image
    from transformers import AutoProcessor, Phi3ForCausalLM

    from tests.fixtures.tiny_vlm import PHI3V_IMAGE_TOKEN_ID, phi3v_image_embeddings

    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True,
                                              num_crops=num_crops)
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"<|image_1|>\n{QUESTION}"}], tokenize=False,
        add_generation_prompt=True)
    inputs = processor(text=text, images=[Image.open(io.BytesIO(png))], return_tensors="pt")
    ids = inputs["input_ids"]
    image_embeds = phi3v_image_embeddings(model_dir, inputs["pixel_values"],
                                          inputs["image_sizes"])[0]
    lm = Phi3ForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        embeds = lm.get_input_embeddings()(ids.clamp(min=0))
        is_image = ids[0] < 0
        assert int(is_image.sum()) == image_embeds.shape[0]
        embeds[0, is_image] = image_embeds
    prompt_ids = ids[0].masked_fill(is_image, PHI3V_IMAGE_TOKEN_ID).tolist()
    return _hf_greedy_from(lm, {"inputs_embeds": embeds}, prompt_ids)


# ----------------------------------------------------------------------------- tests


def test_vit_attention_runs_sdpa_on_the_plugin_device():
    """vLLM's ViT attention layer (CLIP, SigLIP, ...) built under the plugin's platform picks
    TORCH_SDPA and computes softmax attention on the plugin's device."""
    from vllm.attention.layer import MultiHeadAttention
    from vllm.platforms import _Backend, current_platform

    from vllm_xpu_plugin import device

    assert type(current_platform).__name__ == "XPUPluginPlatform"
    attn = MultiHeadAttention(num_heads=4, head_size=32, scale=32**-0.5)
    assert attn.attn_backend == _Backend.TORCH_SDPA
    dev = device.torch_device(0)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 9, 4 * 32, generator=g).to(dev) for _ in range(3))
    out = attn(q, k, v)
    assert out.device.type == dev.type
    qh, kh, vh = (x.cpu().reshape(2, 9, 4, 32).transpose(1, 2) for x in (q, k, v))
    ref = torch.softmax(qh @ kh.transpose(-1, -2) * 32**-0.5, -1) @ vh
    torch.testing.assert_close(out.cpu(), ref.transpose(1, 2).reshape(2, 9, -1),
                               rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def llava_dir():
    from tests.fixtures.tiny_vlm import build_tiny_llava

    return build_tiny_llava()


def test_llava_image_chat_matches_hf(llava_dir):
    images = [_image(80, 64, seed=0), _image(64, 96, seed=1)]
    urls = [_data_url(im) for im in images]
    with _serve(str(llava_dir)) as (base, log):
        got = [_chat_with_image(base, str(llava_dir), url) for url, _ in urls]
        with open(log, errors="replace") as f:
            assert SDPA_LOG_LINE in f.read()
    refs = [_hf_llava(llava_dir, png) for _, png in urls]
    for g, r in zip(got, refs, strict=True):
        assert g["prompt_ids"] == r.prompt_ids  # same expanded prompt (16 image tokens)
        _check(g, r)
    # The image matters: two pictures, same question, different answers.
    assert got[0]["output_ids"] != got[1]["output_ids"]


def _phi3v_case(num_crops: int, size: tuple[int, int]) -> None:
    from tests.fixtures.tiny_vlm import build_tiny_phi3v

    model_dir, lm_dir = build_tiny_phi3v()
    url, png = _data_url(_image(*size, seed=2))
    with _serve(str(model_dir), "--trust-remote-code", "--mm-processor-kwargs",
                json.dumps({"num_crops": num_crops})) as (base, log):
        got = _chat_with_image(base, str(model_dir), url)
        with open(log, errors="replace") as f:
            assert SDPA_LOG_LINE in f.read()
    ref = _hf_phi3v(model_dir, lm_dir, png, num_crops)
    assert got["prompt_ids"] == ref.prompt_ids
    _check(got, ref)


def test_phi35_vision_image_chat_matches_reference():
    _phi3v_case(num_crops=1, size=(300, 200))


@pytest.mark.slow
def test_phi35_vision_hd_tiles_image_chat_matches_reference():
    _phi3v_case(num_crops=4, size=(400, 200))  # 1x2 tiles + global view
