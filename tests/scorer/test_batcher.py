"""The batcher bounds each encoder batch, and drops what a cancelled call still had queued."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from scorer_service.batcher import TextEncodeBatcher


class RecordingEncoder:
    """Embeds the prompt of token ids [i] as [float(i)], recording each batch's first ids; `gate` holds a batch until
    the test opens it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, prompts, prefixes) -> torch.Tensor:
        self.batches.append([p[0] for p in prompts])
        self.entered.set()
        assert self.gate.wait(timeout=10)
        return torch.tensor([[float(p[0])] for p in prompts])


@pytest.fixture
async def encoder_and_batcher():
    encoder = RecordingEncoder()
    batcher = TextEncodeBatcher(encoder, max_batch_prompts=4, max_delay_s=0, max_queued_prompts=100)
    batcher.start()
    yield encoder, batcher
    encoder.gate.set()
    await batcher.close()


async def test_a_call_bigger_than_a_batch_is_encoded_over_bounded_batches_in_order(encoder_and_batcher):
    encoder, batcher = encoder_and_batcher
    encoder.gate.set()
    prompts = [[i] for i in range(10)]
    embeddings = await batcher.encode(prompts)
    assert embeddings.squeeze(1).tolist() == [float(i) for i in range(10)]
    assert [len(batch) for batch in encoder.batches] == [4, 4, 2]


async def test_a_cancelled_call_leaves_the_encoder_after_the_batch_in_hand(encoder_and_batcher):
    encoder, batcher = encoder_and_batcher
    big = asyncio.ensure_future(batcher.encode([[i] for i in range(40)]))
    await asyncio.to_thread(encoder.entered.wait, 10)  # its first batch is on the encoder
    big.cancel()
    encoder.gate.set()
    later = await batcher.encode([[100], [101]])
    assert later.squeeze(1).tolist() == [100.0, 101.0]
    assert encoder.batches == [[0, 1, 2, 3], [100, 101]]
    assert big.cancelled()
