"""Request shapes: prompt/output length distributions, and prompts of an exact token count for the target.

Exactness comes from the target's own tokenizer: vLLM-style ``POST /tokenize`` returns ``{"count": N, ...}``. We look
for a pool of "unit" strings that each add exactly one token however they are mixed (checked at several lengths and
mixes), measure the fixed overhead (BOS, chat template), and then a prompt of T tokens is T - overhead random units.
Random units keep prompts distinct, so only the shared prefix we build on purpose is cacheable.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import httpx

from forge.errors import InputError

# z-score of the 95th percentile of a normal distribution: turns (median, p95) into a lognormal sigma.
Z95 = 1.6448536269514722

# Candidate pools, most natural first. Common three-letter words after a space are one token in BPE vocabularies
# (GPT-2, Llama) and also in 4-characters-per-token tokenizers (Forge's simulator); a character-level tokenizer needs
# single characters. The first pool the target tokenizes one token per unit, however mixed, wins.
UNIT_POOLS: tuple[tuple[str, ...], ...] = (
    tuple(" " + w for w in ("the", "and", "for", "was", "his", "are", "you", "had", "not", "but", "can", "her",
                            "has", "one", "all", "who", "its", "new", "now", "may", "any", "out", "day", "way",
                            "use", "man", "see", "two", "how", "get", "our", "old", "end", "own", "far", "set")),
    tuple(" " + c for c in "abcdefghijklmnopqrstuvwxyz"),
    tuple("abcdefghijklmnopqrstuvwxyz"),
)
# A pool narrowed to one-token words (see calibrate) needs this many for random prompts to stay distinct.
MIN_NARROWED_UNITS = 12


@dataclass(frozen=True)
class LengthDistribution:
    """Token lengths: ``fixed:N``, ``uniform:LO:HI``, ``normal:MEAN:STD``, ``lognormal:MEDIAN:P95[:MAX]``.

    lognormal is the long-tailed one real prompt lengths follow; MAX clamps the tail (e.g. to the context length).
    """

    kind: str
    params: tuple[float, ...]
    maximum: int | None = None

    @classmethod
    def parse(cls, spec: str, flag: str) -> "LengthDistribution":
        kind, _, rest = spec.partition(":")
        try:
            values = tuple(float(v) for v in rest.split(":")) if rest else ()
        except ValueError:
            raise InputError(f"{flag} {spec!r}: parameters must be numbers, e.g. lognormal:256:1024:4096") from None
        arity = {"fixed": (1,), "uniform": (2,), "normal": (2,), "lognormal": (2, 3)}
        if kind not in arity:
            raise InputError(f"{flag} {spec!r}: unknown distribution — use fixed:N, uniform:LO:HI, normal:MEAN:STD "
                             "or lognormal:MEDIAN:P95[:MAX]")
        if len(values) not in arity[kind] or any(v < 0 or not math.isfinite(v) for v in values):
            raise InputError(f"{flag} {spec!r}: {kind} takes {' or '.join(map(str, arity[kind]))} non-negative "
                             "number(s)")
        if kind == "uniform" and values[0] > values[1]:
            raise InputError(f"{flag} {spec!r}: LO must be <= HI")
        if kind == "lognormal":
            if not 0 < values[0] <= values[1]:
                raise InputError(f"{flag} {spec!r}: needs 0 < MEDIAN <= P95")
            if len(values) == 3:
                return cls(kind, values[:2], int(values[2]))
        return cls(kind, values)

    @classmethod
    def from_profile(cls, p50: int, p95: int, maximum: int) -> "LengthDistribution":
        """deploy.yaml's traffic.{prompt,output}_tokens {p50, p95, max} as a clamped lognormal."""
        return cls("lognormal", (max(1, p50), max(1, p95)), max(1, maximum))

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.params[0]
        elif self.kind == "uniform":
            value = rng.uniform(*self.params)
        elif self.kind == "normal":
            value = rng.gauss(*self.params)
        else:
            median, p95 = self.params
            value = rng.lognormvariate(math.log(median), math.log(p95 / median) / Z95)
        tokens = max(1, round(value))
        return min(tokens, self.maximum) if self.maximum else tokens


@dataclass
class TokenizerCalibration:
    """How prompts map to tokens on this target; ``exact`` is False when the target has no usable /tokenize."""

    units: tuple[str, ...]
    overhead: int
    exact: bool
    source: str
    verified_prompts: int = 0
    verify_mismatches: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"exact": self.exact, "source": self.source, "overhead_tokens": self.overhead,
                "unit_example": self.units[0], "verified_prompts": self.verified_prompts,
                "verify_mismatches": self.verify_mismatches, "notes": self.notes}


def tokenize_body(model: str, api: str, text: str) -> dict[str, Any]:
    """The /tokenize request that counts what the target will see for this prompt (chat applies the template)."""
    if api == "chat":
        return {"model": model, "messages": [{"role": "user", "content": text}], "add_generation_prompt": True}
    return {"model": model, "prompt": text}


async def count_tokens(client: httpx.AsyncClient, base_url: str, model: str, api: str, text: str) -> int:
    response = await client.post(f"{base_url}/tokenize", json=tokenize_body(model, api, text))
    response.raise_for_status()
    body = response.json()
    if "count" in body:
        return int(body["count"])
    return len(body["tokens"])


def _mixed_sequence(units: tuple[str, ...], length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices(units, k=length))


async def _single_token_units(client: httpx.AsyncClient, base_url: str, model: str, api: str,
                              units: tuple[str, ...]) -> tuple[str, ...]:
    """The units that add exactly one token, alone and repeated, with the same overhead as each other."""
    by_overhead: dict[int, list[str]] = {}
    for unit in units:
        once = await count_tokens(client, base_url, model, api, unit)
        twice = await count_tokens(client, base_url, model, api, unit * 2)
        if twice - once == 1:
            by_overhead.setdefault(once - 1, []).append(unit)
    return tuple(max(by_overhead.values(), key=len)) if by_overhead else ()


async def calibrate(client: httpx.AsyncClient, base_url: str, model: str, api: str) -> TokenizerCalibration:
    """Find a unit pool that the target tokenizes one token per unit, and the fixed overhead around a prompt."""
    notes: list[str] = []
    pools = list(UNIT_POOLS)
    for position, units in enumerate(pools):
        try:
            overhead = await count_tokens(client, base_url, model, api, _mixed_sequence(units, 8, 1)) - 8
            linear = True
            for length, seed in ((16, 2), (64, 3), (200, 4)):
                counted = await count_tokens(client, base_url, model, api, _mixed_sequence(units, length, seed))
                if counted != overhead + length:
                    linear = False
                    break
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            notes.append(f"/tokenize unusable ({type(exc).__name__}: {str(exc)[:120]}); token counts are estimates")
            return TokenizerCalibration(UNIT_POOLS[0], 0, False, "estimate (no /tokenize)", notes=notes)
        if linear and overhead >= 0:
            return TokenizerCalibration(units, overhead, True, "target /tokenize", notes=notes)
        notes.append(f"unit pool {units[0]!r}... is not one token per unit on this tokenizer")
        if position == 0:
            # A small vocabulary (e.g. the tiny test Llama's 2,048 BPE tokens) has most but not all of the words:
            # next try the words that are one token there.
            try:
                narrowed = await _single_token_units(client, base_url, model, api, units)
            except (httpx.HTTPError, ValueError, KeyError):
                narrowed = ()
            if len(narrowed) >= MIN_NARROWED_UNITS:
                pools.insert(1, narrowed)
    notes.append("no unit pool tokenizes one token per unit; token counts are estimates")
    return TokenizerCalibration(UNIT_POOLS[0], 0, False, "estimate (no linear unit pool)", notes=notes)


class PromptFactory:
    """Builds the prompt of request ``index``: an optional shared prefix, then unique random units."""

    def __init__(self, calibration: TokenizerCalibration, *, seed: int = 0, shared_prefix_tokens: int = 0,
                 prefix_groups: int = 1):
        self.calibration = calibration
        self.seed = seed
        self.shared_prefix_tokens = shared_prefix_tokens
        self.prefix_groups = max(1, prefix_groups)
        # Each group's prefix is fixed for the run: that is what a prefix cache can reuse.
        self._prefix_units = [random.Random(seed * 1000 + 7 + g).choices(calibration.units, k=shared_prefix_tokens)
                              for g in range(self.prefix_groups)]

    def prefix_group(self, index: int) -> int:
        return index % self.prefix_groups

    def build(self, index: int, target_tokens: int) -> str:
        units_wanted = max(1, target_tokens - self.calibration.overhead)
        # A request shorter than the shared prefix uses the start of it (still a cacheable prefix).
        prefix_len = min(self.shared_prefix_tokens, units_wanted)
        prefix = "".join(self._prefix_units[self.prefix_group(index)][:prefix_len])
        rng = random.Random(self.seed * 1_000_003 + index)
        return prefix + "".join(rng.choices(self.calibration.units, k=units_wanted - prefix_len))

    async def verify(self, client: httpx.AsyncClient, base_url: str, model: str, api: str,
                     samples: list[tuple[int, int]]) -> None:
        """Tokenize a few real prompts of the run; mismatches are reported in the summary, not hidden."""
        if not self.calibration.exact:
            return
        for index, target in samples:
            counted = await count_tokens(client, base_url, model, api, self.build(index, target))
            self.calibration.verified_prompts += 1
            if counted != max(target, self.calibration.overhead + 1):
                self.calibration.verify_mismatches += 1

