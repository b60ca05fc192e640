"""What an LLM's tokens cost, in US dollars: the `--llm-price` override, else the genai-prices table.

genai-prices (pydantic's maintained table of provider prices, pinned in pyproject.toml) is looked up by the
endpoint's URL and the model name. A URL the table does not know (a self-hosted vLLM, llama-server, a proxy) has
no price: its cost is *unknown*, never $0, since a self-hosted server is not billed at a provider's list price
and a proxy may bill anything. The table is the snapshot the installed release ships; nothing is fetched.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Price:
    """US dollars per million prompt and completion tokens."""

    prompt_per_mtok: float = 0.0
    completion_per_mtok: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_per_mtok + completion_tokens * self.completion_per_mtok) / 1e6


@functools.cache
def table_price(model: str, base_url: str) -> Price | None:
    """The table's price of `model` at the provider serving `base_url`; None where it has none."""
    from genai_prices import Usage, calc_price  # its snapshot loads in ~0.3 s: only when a price is wanted

    if not model:
        return None
    try:
        prompt = calc_price(Usage(input_tokens=1_000_000), model, provider_api_url=base_url)
        completion = calc_price(Usage(output_tokens=1_000_000), model, provider_api_url=base_url)
    except LookupError as err:
        log.info("llm_price_unknown", model=model, base_url=base_url, reason=str(err))
        return None
    return Price(float(prompt.total_price), float(completion.total_price))


def price_of(model: str, base_url: str, override: Price | None) -> Price | None:
    """The price to count `model`'s tokens by: the operator's override, else the table's, else None (unknown)."""
    return override if override is not None else table_price(model, base_url)


def format_usd(usd: float | None) -> str:
    """Dollars as the progress bar and the report show them; None (no price) as "unknown", never "$0"."""
    if usd is None:
        return "unknown"
    return f"${usd:.4f}" if usd < 1 else f"${usd:.2f}"
