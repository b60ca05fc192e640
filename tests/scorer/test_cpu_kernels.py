"""oneDNN kernels change how the CPU computes, never what: same weights, fp32 results."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import CLIPTextConfig
from transformers.models.clip.modeling_clip import CLIPMLP

from scorer_service.config import parse_config
from scorer_service.cpu_kernels import OneDnnClipMlp, OneDnnLinear, onednn_linear_is_fp32, use_onednn_kernels
from scorer_service.device import default_batch_prompts
from scorer_service.factory import load_clip
from scorer_service.identity import weights_digest
from scorer_service.model import CHUNK_PROMPTS


@pytest.fixture(scope="module")
def encoders(tiny_clip_dir):
    return load_clip(str(tiny_clip_dir)), load_clip(str(tiny_clip_dir), cpu_matmul="torch")


def test_this_machine_passes_the_fp32_check():
    # the benchmark's figures rely on it; a build computing fp32 as bf16 fails it
    assert onednn_linear_is_fp32()


def test_the_swap_changes_kernels_but_not_weights(encoders):
    fast, plain = encoders
    kinds = {type(m) for m in fast.model.modules()}
    assert OneDnnClipMlp in kinds and OneDnnLinear in kinds and torch.nn.Linear not in kinds
    assert {type(m) for m in plain.model.modules()} >= {CLIPMLP, torch.nn.Linear}
    assert weights_digest(fast) == weights_digest(plain)  # the image-feature cache key: the weights did not move


def test_text_and_image_features_agree_with_torch_kernels(encoders):
    fast, plain = encoders
    prompts = ["a photo of a cat.", "a blurry photo of the red apple in the wild.", "x"]
    assert torch.allclose(fast.encode_text(prompts), plain.encode_text(prompts), atol=1e-5)
    images = [Image.new("RGB", (40, 30), color) for color in ("red", "navy", "white")]
    assert torch.allclose(fast.encode_images(images), plain.encode_images(images), atol=1e-5)


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_a_fused_mlp_equals_clips_mlp(activation):
    torch.manual_seed(0)
    config = CLIPTextConfig(hidden_size=64, intermediate_size=256, hidden_act=activation)
    mlp = CLIPMLP(config).eval()
    hidden = torch.randn(3, 7, 64)
    with torch.inference_mode():
        expected = mlp(hidden)
        assert use_onednn_kernels(mlp) >= 1 and type(mlp) is OneDnnClipMlp
        got = mlp(hidden)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_other_activations_keep_clips_mlp():
    mlp = CLIPMLP(CLIPTextConfig(hidden_size=64, intermediate_size=256, hidden_act="relu"))
    use_onednn_kernels(mlp)
    assert type(mlp) is CLIPMLP and type(mlp.fc1) is OneDnnLinear


def test_the_kernel_choice_is_a_flag(tmp_path):
    assert parse_config(["--task", f"a={tmp_path}"]).cpu_matmul == "onednn"
    assert parse_config(["--task", f"a={tmp_path}", "--cpu-matmul", "torch"]).cpu_matmul == "torch"
    with pytest.raises(SystemExit):
        parse_config(["--task", f"a={tmp_path}", "--cpu-matmul", "mkl"])


def test_the_batch_bound_defaults_by_device(tmp_path):
    assert parse_config(["--task", f"a={tmp_path}"]).max_batch_prompts == 0
    assert default_batch_prompts(torch.device("cpu")) == CHUNK_PROMPTS < default_batch_prompts(torch.device("cuda"))
    with pytest.raises(SystemExit):
        parse_config(["--task", f"a={tmp_path}", "--max-batch-prompts", "-1"])
