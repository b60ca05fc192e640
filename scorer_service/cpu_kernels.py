"""fp32 linear layers and CLIP's MLPs through oneDNN on CPU.

On CPU, PyTorch runs fp32 matmuls through MKL. MKL takes its AVX2 code path on
AMD processors. oneDNN, which PyTorch also ships, uses AVX-512 there. On the
2-core Zen 5 this project is benchmarked on, oneDNN's fp32 GEMM runs at about
twice MKL's speed, still in fp32: the results differ from MKL's only in the last
bits, because the sums run in another order. On Intel processors the two
libraries are close.

oneDNN also applies an activation inside the matmul, so CLIP's MLP activation
takes no passes of its own over the 4x-wide hidden layer (see OneDnnClipMlp).

A oneDNN build may be told to compute fp32 at reduced precision (implicit
bf16). The swap is therefore checked once against float64, and it is refused
if the check fails, so predictions never move beyond float noise.
"""

from __future__ import annotations

import functools
import typing

import structlog
import torch
from torch import nn
from torch.nn import functional
from transformers.models.clip.modeling_clip import CLIPMLP

log = structlog.get_logger(__name__)

# fp32 sums of a few hundred terms land within ~1e-7 of float64; implicit bf16 is ~1e-3 off.
_FP32_TOLERANCE = 1e-5


def _linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none", algorithm: str = ""
) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], algorithm)
    return out


class OneDnnLinear(nn.Linear):
    """An nn.Linear whose forward is oneDNN's fp32 matmul; same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight, self.bias)


# CLIP activations oneDNN can fuse: (oneDNN post-op, its algorithm, input scale).
# quick_gelu is a scaled swish: z * sigmoid(1.702 z) = swish(1.702 z) / 1.702.
_FUSIBLE_ACTIVATIONS = {"quick_gelu": ("swish", "", 1.702), "gelu": ("gelu", "none", 1.0)}


class OneDnnClipMlp(CLIPMLP):
    """CLIP's MLP with its activation fused into fc1's matmul.

    For a scaled activation f(z) = g(a z) / a, fc1 runs with weights and bias
    times a, and fc2 with weights divided by a; those scaled copies are made once
    by `use_onednn_kernels` (the parameters, and so the state dict, stay as loaded).
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        activation, algorithm, _ = _FUSIBLE_ACTIVATIONS[self.config.hidden_act]
        hidden = _linear(hidden_states, self.fused_fc1_weight, self.fused_fc1_bias, activation, algorithm)
        return _linear(hidden, self.fused_fc2_weight, self.fc2.bias)

    def fuse(self) -> None:
        scale = _FUSIBLE_ACTIVATIONS[self.config.hidden_act][2]
        with torch.no_grad():
            self.fused_fc1_weight = self.fc1.weight * scale
            self.fused_fc1_bias = self.fc1.bias * scale
            self.fused_fc2_weight = self.fc2.weight / scale


@functools.cache
def onednn_linear_is_fp32() -> bool:
    """Whether oneDNN's linear is available here and computes at fp32 precision."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 512, generator=generator)
    weight = torch.randn(256, 512, generator=generator) / 512**0.5
    bias = torch.randn(256, generator=generator)
    try:
        got = _linear(x, weight, bias)
    except (AttributeError, RuntimeError) as err:  # a build without oneDNN, or without the op
        log.warning("onednn_linear_unavailable", error=str(err))
        return False
    want = functional.linear(x.double(), weight.double(), bias.double())
    error = ((got.double() - want).norm() / want.norm()).item()
    if error > _FP32_TOLERANCE:
        log.warning("onednn_linear_not_fp32", relative_error=error, tolerance=_FP32_TOLERANCE)
        return False
    return True


def use_onednn_kernels(model: nn.Module) -> int:
    """Runs `model`'s fp32 CPU linear layers and CLIP MLPs on oneDNN; returns how many modules changed.

    Only classes change, so parameters, hooks and the state dict stay the same.
    Returns 0, and changes nothing, when oneDNN fails its fp32 check.
    """
    if not onednn_linear_is_fp32():
        return 0
    changed = 0
    for module in model.modules():
        if type(module) is CLIPMLP and module.config.hidden_act in _FUSIBLE_ACTIVATIONS and _is_cpu_fp32(module.fc1):
            module.__class__ = OneDnnClipMlp
            typing.cast(OneDnnClipMlp, module).fuse()
            changed += 1
        elif type(module) is nn.Linear and _is_cpu_fp32(module):
            module.__class__ = OneDnnLinear
            changed += 1
    return changed


def _is_cpu_fp32(linear: nn.Linear) -> bool:
    return linear.weight.device.type == "cpu" and linear.weight.dtype == torch.float32
