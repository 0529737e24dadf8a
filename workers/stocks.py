"""Stock ticks: a geometric Brownian motion price per symbol, event `tick` on stocks.<SYMBOL>.

Each symbol ticks at random moments (a Poisson process at `stocks_rate` a second), and
its price moves by the random walk over the market time that passed, which runs
`stocks_speed` times faster than the clock so that the demo moves visibly.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from dataclasses import dataclass
from functools import partial

from pydantic import JsonValue

from service.models import PublishEvent
from workers.runtime import Runtime

# 252 trading days of 6.5 hours: the year that annualised volatility refers to.
_MARKET_SECONDS_PER_YEAR = 252 * 6.5 * 3600
_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9.-]{0,19}")
_LOT = 100


@dataclass
class Quote:
    symbol: str
    reference: float
    """The price changes are measured from: the start price."""
    price: float
    volume: int = 0

    def move(self, market_years: float, volatility: float, rng: random.Random) -> None:
        """Advance the price by a driftless GBM step over `market_years`."""
        shock = rng.gauss(0.0, 1.0)
        drift = -0.5 * volatility**2 * market_years
        self.price *= math.exp(drift + volatility * math.sqrt(market_years) * shock)
        self.volume += _LOT * max(1, round(rng.lognormvariate(0.0, 1.0) * 5))

    def tick(self, now: float) -> dict[str, JsonValue]:
        price = round(self.price, 2)
        change = price - self.reference
        return {
            "symbol": self.symbol,
            "price": price,
            "change": round(change, 2),
            "change_pct": round(100 * change / self.reference, 2),
            "volume": self.volume,
            "ts": int(now * 1000),
        }


def parse_symbols(text: str) -> list[Quote]:
    """`"AAPL=189.5,MSFT=415"` → quotes starting at those prices."""
    quotes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        symbol, sep, price = item.partition("=")
        symbol = symbol.strip().upper()
        if not sep or not _SYMBOL.fullmatch(symbol):
            raise ValueError(f"{item!r} is not SYMBOL=PRICE (e.g. AAPL=189.50)")
        try:
            start = float(price)
        except ValueError:
            raise ValueError(f"{item!r}: {price!r} is not a price") from None
        if not (math.isfinite(start) and start > 0):
            raise ValueError(f"{item!r}: the price must be a positive number")
        quotes.append(Quote(symbol, start, start))
    if not quotes:
        raise ValueError("no symbols: set HERALD_STOCKS_SYMBOLS, e.g. AAPL=189.50,MSFT=415")
    return quotes


async def run(rt: Runtime) -> None:
    settings = rt.settings
    try:
        quotes = parse_symbols(settings.stocks_symbols)
    except ValueError as exc:
        raise SystemExit(f"herald worker stocks: {exc}") from None
    rng = random.Random()
    loop = asyncio.get_running_loop()
    start = loop.time()
    due = {q.symbol: start + rng.expovariate(settings.stocks_rate) for q in quotes}
    moved_at = dict.fromkeys(due, start)
    while True:
        now = loop.time()
        ticking = [q for q in quotes if due[q.symbol] <= now]
        if ticking:
            for quote in ticking:
                elapsed = now - moved_at[quote.symbol]
                quote.move(
                    elapsed * settings.stocks_speed / _MARKET_SECONDS_PER_YEAR,
                    settings.stocks_volatility,
                    rng,
                )
                moved_at[quote.symbol] = now
                due[quote.symbol] = now + rng.expovariate(settings.stocks_rate)
            wall = time.time()
            events = [
                PublishEvent(topic=f"stocks.{q.symbol}", event="tick", data=q.tick(wall))
                for q in ticking
            ]
            await rt.retry("publishing ticks", partial(rt.sink.publish, events))
        await rt.sleep(min(due.values()) - loop.time())
