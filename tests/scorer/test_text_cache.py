"""The text-embedding cache holds what its bound counts, and no more."""

from __future__ import annotations

import torch

from scorer_service.scoring import TextEmbeddingCache


def test_least_recently_used_prompts_leave_first_to_keep_the_byte_bound():
    row_bytes = 4 * 8 + len("prompt 0") + 3 * TextEmbeddingCache.ID_BYTES + TextEmbeddingCache.ENTRY_OVERHEAD_BYTES
    cache = TextEmbeddingCache(max_bytes=3 * row_bytes)
    for i in range(3):
        cache.put(f"prompt {i}", (1, i, 2), torch.full((8,), float(i)))
    assert cache.get("prompt 0") is not None  # now the most recent
    cache.put("prompt 3", (1, 3, 2), torch.zeros(8))
    assert cache.get("prompt 1") is None and len(cache) == 3 and cache.bytes <= cache.max_bytes
    kept = cache.get("prompt 0")
    assert kept is not None and kept.ids == (1, 0, 2) and torch.equal(kept.embedding, torch.zeros(8))


def test_a_cached_row_does_not_keep_its_encoder_batch_alive():
    batch = torch.randn(4096, 512)  # one encoder batch: 8 MiB
    cache = TextEmbeddingCache(max_bytes=2**20)
    cache.put("a photo of a cat.", (1, 2, 3, 4), batch[7])
    cached = cache.get("a photo of a cat.")
    assert cached is not None and torch.equal(cached.embedding, batch[7])
    assert cached.embedding.untyped_storage().nbytes() == 512 * 4  # its own row, not the batch's storage
