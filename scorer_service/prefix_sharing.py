"""Encode prompts that share token prefixes, computing each prefix once.

All class prompts of one template share the tokens before the class name. The
text tower is causal, so the hidden states of those tokens do not depend on
what follows: each prefix is run once, and every prompt's remaining tokens
(its suffix) attend to their prefix's keys and values. Suffixes of many
templates run together in one batch, so the linear layers see large matrices
whatever the mix of templates. Tokens after a prompt's end-of-text token are
padding that no earlier token can see, so suffixes need no padding mask. Only
the end-of-text token is pooled, so the last layer computes every token's keys
and values but the query, attention and MLP of that one token alone.
"""

from __future__ import annotations

import torch
from torch.nn import functional
from transformers import CLIPModel


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


def _padded(rows: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out.to(device)


def eot_positions(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Where each row's end-of-text token is, as transformers' CLIP pools it."""
    if eos_token_id == 2:  # legacy configs: the end-of-text token has the highest id
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


@torch.inference_mode()
def encode_with_shared_prefixes(
    model: CLIPModel, prefixes: list[list[int]], suffixes: list[list[int]], prefix_of: list[int], pad_id: int
) -> torch.Tensor:
    """Projected (unnormalised) text features of prefixes[prefix_of[i]] + suffixes[i], for each i."""
    text = model.text_model
    device = text.embeddings.token_embedding.weight.device
    positions = text.embeddings.position_embedding.weight
    prefix_ids, suffix_ids = _padded(prefixes, pad_id, device), _padded(suffixes, pad_id, device)
    group = torch.tensor(prefix_of, device=device)
    prefix_len = torch.tensor([len(p) for p in prefixes], device=device)[group]  # per suffix row
    n, s = suffix_ids.shape
    longest_prefix = prefix_ids.shape[1]

    prefix_h = text.embeddings.token_embedding(prefix_ids) + positions[:longest_prefix]
    suffix_positions = (prefix_len[:, None] + torch.arange(s, device=device)).clamp(max=positions.shape[0] - 1)
    suffix_h = text.embeddings.token_embedding(suffix_ids) + positions[suffix_positions]
    # a suffix sees its own prefix (not the padding after a shorter one) and itself causally
    dtype = suffix_h.dtype
    hidden_prefix = torch.arange(longest_prefix, device=device)[None, :] >= prefix_len[:, None]
    prefix_bias = torch.zeros(n, 1, 1, longest_prefix, device=device, dtype=dtype).masked_fill(
        hidden_prefix[:, None, None, :], float("-inf")
    )
    causal_bias = torch.full((s, s), float("-inf"), device=device, dtype=dtype).triu(1)

    # the end-of-text token, located in the whole prompt and indexed in the suffix
    whole = torch.cat([prefix_ids[group], suffix_ids], dim=1)
    real = torch.cat([~hidden_prefix, torch.ones(n, s, dtype=torch.bool, device=device)], dim=1)
    whole = whole.masked_fill(~real, -1)  # the padding after a short prefix is not an end-of-text token
    eot = eot_positions(whole, text.eos_token_id) - longest_prefix
    rows = torch.arange(n, device=device)

    *body, last = text.encoder.layers
    for layer in body:
        attn = layer.self_attn
        heads = attn.num_heads
        normed_p, normed_s = layer.layer_norm1(prefix_h), layer.layer_norm1(suffix_h)
        qp, kp, vp = (_heads(proj(normed_p), heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        qs, ks, vs = (_heads(proj(normed_s), heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        out_p = functional.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=attn.scale)
        out_s = _suffix_attention(qs, kp[group], vp[group], ks, vs, prefix_bias, causal_bias, attn.scale)
        prefix_h = prefix_h + attn.out_proj(_merge_heads(out_p))
        suffix_h = suffix_h + attn.out_proj(_merge_heads(out_s))
        prefix_h = prefix_h + layer.mlp(layer.layer_norm2(prefix_h))
        suffix_h = suffix_h + layer.mlp(layer.layer_norm2(suffix_h))

    # Only the end-of-text token's output is pooled, so the last layer needs every
    # token's keys and values but the query, attention and MLP of that one token.
    attn = last.self_attn
    heads = attn.num_heads
    normed_p, normed_s = last.layer_norm1(prefix_h), last.layer_norm1(suffix_h)
    kp, vp = _heads(attn.k_proj(normed_p), heads), _heads(attn.v_proj(normed_p), heads)
    ks, vs = _heads(attn.k_proj(normed_s), heads), _heads(attn.v_proj(normed_s), heads)
    q_eot = _heads(attn.q_proj(normed_s[rows, eot][:, None]), heads)  # [n, h, 1, d]
    out = _suffix_attention(
        q_eot, kp[group], vp[group], ks, vs, prefix_bias, causal_bias[eot][:, None, None], attn.scale
    )
    pooled = suffix_h[rows, eot][:, None] + attn.out_proj(_merge_heads(out))
    pooled = pooled + last.mlp(last.layer_norm2(pooled))
    projected: torch.Tensor = model.text_projection(text.final_layer_norm(pooled[:, 0]))
    return projected


def _suffix_attention(
    q: torch.Tensor,
    kp_rows: torch.Tensor,
    vp_rows: torch.Tensor,
    ks: torch.Tensor,
    vs: torch.Tensor,
    prefix_bias: torch.Tensor,
    suffix_bias: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Suffix queries attending to their prefix's keys and to the suffix's (masked by the biases).

    kp_rows and vp_rows [n, h, P, d] are the prefix's keys and values per suffix row: small, P is a few tokens.
    """
    n, _, queries, _ = q.shape
    keys, values = torch.cat([kp_rows, ks], dim=2), torch.cat([vp_rows, vs], dim=2)
    bias = torch.cat([prefix_bias.expand(n, 1, queries, -1), suffix_bias.expand(n, 1, queries, -1)], dim=-1)
    return functional.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=scale)
