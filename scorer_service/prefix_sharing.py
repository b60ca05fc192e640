"""Encode many prompts that share a token prefix, computing the prefix once.

All class prompts of one template share the tokens before the class name. The
text tower is causal, so the hidden states of those tokens do not depend on
what follows; they are computed once, and each prompt's remaining tokens
attend to the prefix's keys and values. For "a photo of a {}." that is
about half the tower's work. Tokens after a prompt's end-of-text token are
padding that no earlier token can see, so no padding mask is needed.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers import CLIPModel


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def eot_positions(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Where each row's end-of-text token is, as transformers' CLIP pools it."""
    if eos_token_id == 2:  # legacy configs: the end-of-text token has the highest id
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


def _attend_past_prefix(q, prefix_k, prefix_v, k, v, causal: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of suffix queries over the shared prefix (all visible) and the
    suffix itself (causal). The prefix keys broadcast over the batch, uncopied."""
    prefix_scores = torch.matmul(q, prefix_k.transpose(-1, -2)) * scale  # [n, h, s, p]
    own_scores = torch.matmul(q, k.transpose(-1, -2)) * scale + causal.to(q.dtype)  # [n, h, s, s]
    weights = torch.softmax(torch.cat([prefix_scores, own_scores], dim=-1).float(), dim=-1).to(q.dtype)
    p = prefix_k.shape[-2]
    return torch.matmul(weights[..., :p], prefix_v) + torch.matmul(weights[..., p:], v)


@torch.inference_mode()
def encode_with_shared_prefix(model: CLIPModel, prefix: list[int], suffixes: list[list[int]], pad_id: int) -> torch.Tensor:
    """Projected (unnormalised) text features of prefix+suffix for each suffix."""
    text = model.text_model
    device = text.embeddings.token_embedding.weight.device
    n, p, s = len(suffixes), len(prefix), max(len(x) for x in suffixes)
    prefix_ids = torch.tensor([prefix], device=device)
    suffix_ids = torch.full((len(suffixes), s), pad_id, dtype=torch.long, device=device)
    for row, suffix in enumerate(suffixes):
        suffix_ids[row, : len(suffix)] = torch.tensor(suffix, device=device)
    positions = text.embeddings.position_embedding.weight
    prefix_h = text.embeddings.token_embedding(prefix_ids) + positions[:p]
    suffix_h = text.embeddings.token_embedding(suffix_ids) + positions[p : p + s]
    causal = torch.full((s, s), float("-inf"), device=device).triu(1)
    for layer in text.encoder.layers:
        attn = layer.self_attn
        heads = attn.num_heads
        normed_p, normed_s = layer.layer_norm1(prefix_h), layer.layer_norm1(suffix_h)
        kp, vp = _heads(attn.k_proj(normed_p), heads), _heads(attn.v_proj(normed_p), heads)
        qp = _heads(attn.q_proj(normed_p), heads)
        out_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=attn.scale)
        qs, ks, vs = (_heads(proj(normed_s), heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        out_s = _attend_past_prefix(qs, kp, vp, ks, vs, causal, attn.scale)
        prefix_h = prefix_h + attn.out_proj(out_p.transpose(1, 2).reshape(1, p, -1))
        suffix_h = suffix_h + attn.out_proj(out_s.transpose(1, 2).reshape(n, s, -1))
        prefix_h = prefix_h + layer.mlp(layer.layer_norm2(prefix_h))
        suffix_h = suffix_h + layer.mlp(layer.layer_norm2(suffix_h))
    full_ids = torch.cat([prefix_ids.expand(n, -1), suffix_ids], dim=1)
    eot = eot_positions(full_ids, text.eos_token_id) - p
    pooled = text.final_layer_norm(suffix_h[torch.arange(n, device=device), eot])
    return model.text_projection(pooled)
