"""Reading a worker's /metrics as Prometheus would (shared by the metrics and channel tests)."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


class Scraper:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self.http.get(self.base + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
        samples = {}
        for family in text_string_to_metric_families(text):
            assert family.name.startswith("cht_rapidpro_"), family.name
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    async def value(self, name: str, **labels: str) -> float | None:
        return (await self.scrape()).get((name, tuple(sorted(labels.items()))))
