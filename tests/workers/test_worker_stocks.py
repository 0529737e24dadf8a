"""The stock ticks worker: its random walk, and the ticks it publishes into a real Redis."""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time

import pytest
import redis.asyncio as aioredis

from service.settings import Settings
from service.storage.stores import open_store
from tests.conftest import RedisServer, wait_until
from workers import stocks
from workers.runtime import Runtime, run_until_stopped
from workers.sink import StoreSink


def test_symbols_are_parsed_with_their_start_prices() -> None:
    quotes = stocks.parse_symbols(" aapl=189.5, MSFT=415 ,")
    assert [(q.symbol, q.price, q.reference) for q in quotes] == [
        ("AAPL", 189.5, 189.5),
        ("MSFT", 415.0, 415.0),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("AAPL", "not SYMBOL=PRICE"),
        ("AAPL=abc", "is not a price"),
        ("AAPL=-3", "positive"),
        ("AAPL=nan", "positive"),
        ("A A=3", "not SYMBOL=PRICE"),
        ("", "no symbols"),
    ],
)
def test_bad_symbols_are_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        stocks.parse_symbols(text)


def test_the_walk_has_the_configured_volatility_and_no_drift() -> None:
    rng = random.Random(7)
    volatility, step_years = 0.4, 1 / 2000
    returns = []
    for _ in range(20_000):
        quote = stocks.Quote("X", 100.0, 100.0)
        quote.move(step_years, volatility, rng)
        returns.append(math.log(quote.price / 100.0))
    expected_sd = volatility * math.sqrt(step_years)
    assert statistics.stdev(returns) == pytest.approx(expected_sd, rel=0.03)
    # Driftless GBM: the mean price stays where it was (within sampling error).
    mean_price = statistics.fmean(100 * math.exp(r) for r in returns)
    assert mean_price == pytest.approx(100.0, abs=4 * 100 * expected_sd / math.sqrt(20_000))


def test_a_tick_reports_change_from_the_start_price() -> None:
    quote = stocks.Quote("AAPL", 200.0, 210.456, volume=1200)
    tick = quote.tick(1_800_000_000.25)
    assert tick == {
        "symbol": "AAPL",
        "price": 210.46,
        "change": 10.46,
        "change_pct": 5.23,
        "volume": 1200,
        "ts": 1_800_000_000_250,
    }


@pytest.mark.integration
async def test_ticks_land_in_each_symbols_stream_with_the_documented_fields(
    flushed_redis: RedisServer, redis_client: aioredis.Redis
) -> None:
    settings = Settings(
        redis_url=flushed_redis.url, stocks_symbols="AAPL=100,MSFT=50", stocks_rate=40
    )
    store = open_store(settings)
    runtime = Runtime("stocks", settings, StoreSink(store, settings), store)
    started = time.time()
    task = asyncio.create_task(run_until_stopped(stocks.run, runtime))

    async def both_ticked_20_times() -> bool:
        lengths = [await redis_client.xlen(f"herald:stream:stocks.{s}") for s in ("AAPL", "MSFT")]
        return min(lengths) >= 20

    try:
        await wait_until(both_ticked_20_times, "20 ticks of each symbol")
    finally:
        runtime.stopping.set()
        await asyncio.wait_for(task, 5)
        await store.close()
    for symbol, start in (("AAPL", 100.0), ("MSFT", 50.0)):
        entries = await redis_client.xrange(f"herald:stream:stocks.{symbol}")
        volumes = []
        for _, fields in entries:
            assert fields["event"] == "tick"
            tick = json.loads(fields["data"])
            assert set(tick) == {"symbol", "price", "change", "change_pct", "volume", "ts"}
            assert tick["symbol"] == symbol
            assert tick["price"] > 0
            assert tick["change"] == pytest.approx(tick["price"] - start, abs=0.011)
            assert started * 1000 - 1 <= tick["ts"] <= time.time() * 1000 + 1
            volumes.append(tick["volume"])
        assert volumes == sorted(volumes) and volumes[0] > 0
