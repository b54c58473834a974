"""Generate large synthetic fact-verification inputs with a realistic length spread.

    python bench/gen_claims.py --count 100000 --out /tmp/claims-100k.jsonl

Evidence length follows a log-normal distribution fitted to the bundled claims (median
about 19 words, a long tail to about 100), so batches see the padding a real corpus gives.
Labels are balanced. The text is synthetic but well formed; it is for speed, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path

PLACES = [
    "Lisbon",
    "Nairobi",
    "Osaka",
    "Quito",
    "Tromso",
    "Hobart",
    "Tbilisi",
    "Cusco",
    "Dakar",
    "Perth",
    "Bergen",
    "Hanoi",
    "Leon",
    "Mysore",
    "Gdansk",
    "Recife",
]
THINGS = [
    "bridge",
    "observatory",
    "library",
    "canal",
    "cathedral",
    "railway",
    "harbour",
    "museum",
    "dam",
    "lighthouse",
    "market",
    "university",
    "stadium",
    "tower",
]
PEOPLE = [
    "an engineer",
    "a merchant guild",
    "the city council",
    "a monastic order",
    "a shipping company",
    "a local king",
    "two architects",
    "a railway company",
]
FILLER = [
    "It was restored several times after storms damaged its oldest sections.",
    "Visitors reach it on foot from the old town in about twenty minutes.",
    "Its records are kept in the regional archive and are open to researchers.",
    "The surrounding district grew quickly once trade routes shifted toward the coast.",
    "Several smaller structures of the same period stand within a kilometre of it.",
    "Local guides describe its history in three languages during the summer season.",
    "A survey in the last century measured its foundations and found them sound.",
    "Photographs from its opening day are displayed in a nearby gallery.",
]


def _evidence(rng: random.Random, place: str, thing: str, who: str, year: int) -> str:
    words = max(5, min(110, round(math.exp(rng.gauss(math.log(19), 0.6)))))
    sentences = [f"The {thing} of {place} was built by {who} in {year}."]
    while sum(len(s.split()) for s in sentences) < words:
        sentences.append(rng.choice(FILLER))
    return " ".join(sentences)


def make_claim(rng: random.Random, index: int) -> dict[str, str]:
    place, thing, who = rng.choice(PLACES), rng.choice(THINGS), rng.choice(PEOPLE)
    year = rng.randint(1400, 1990)
    label = ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")[index % 3]
    if label == "SUPPORTS":
        claim = f"{who.capitalize()} built the {thing} of {place} in {year}."
    elif label == "REFUTES":
        claim = f"The {thing} of {place} was built in {year + rng.choice([-60, -25, 30, 80])}."
    else:
        claim = f"The {thing} of {place} cost more than {rng.randint(2, 90)} million to build."
    return {
        "id": f"syn-{index:08d}",
        "claim": claim,
        "evidence": _evidence(rng, place, thing, who, year),
        "label": label,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    lengths = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as handle:
        for index in range(args.count):
            record = make_claim(rng, index)
            lengths.append(len(record["evidence"].split()) + len(record["claim"].split()))
            handle.write(json.dumps(record) + "\n")
    quantiles = statistics.quantiles(lengths, n=20)
    print(f"wrote {args.count} claims to {args.out}")
    print(
        f"words per claim+evidence: min {min(lengths)}  median {statistics.median(lengths):.0f}"
        f"  p95 {quantiles[-1]:.0f}  max {max(lengths)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
