"""Emergent-communication metrics of a discrete protocol (as in EGG): how the messages' symbols map onto the
meanings they are about. Pure functions over ``symbols`` (N, positions), one row per message with the
symbol at each position, and ``meanings`` (N,) categorical (the sender's private information) or (N, A)
attribute tuples. The marl driver computes them at the final evaluation, on held-out games, for every
discretised channel whose sender holds the private information."""

from __future__ import annotations

from typing import Any

import torch

MAX_PAIRS_ROWS = 2000  # topographic similarity compares every pair: rows beyond this are left out


def message_strings(symbols: torch.Tensor) -> list[str]:
    """Each message as its symbol string: digits side by side (``0110``) when every symbol is one digit,
    else joined by ``-``."""
    rows = symbols.long().tolist()
    short = bool(symbols.numel() == 0 or (0 <= int(symbols.min()) and int(symbols.max()) <= 9))
    return ["".join(map(str, r)) if short else "-".join(map(str, r)) for r in rows]


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks with ties given their average rank (what Spearman's correlation needs)."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2  # 1-based average position of each run of ties
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = average[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman's rank correlation of two equally long vectors; None where one of them is constant."""
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return None if denominator == 0 else float((ra * rb).sum()) / denominator


def topographic_similarity(symbols: torch.Tensor, meanings: torch.Tensor) -> float | None:
    """Spearman correlation, over every pair of messages, between the distance of their meanings and the
    Hamming distance of their symbol strings: 1 when messages are as far apart as what they mean, ~0 for a
    code unrelated to the meanings. Meanings (N,) are categorical: two meanings are at distance 0 when
    equal and 1 otherwise (so 1 means every meaning has its own message and all are equally far apart);
    attribute tuples (N, A) are compared by the Hamming distance of their attributes. Only the first
    ``MAX_PAIRS_ROWS`` rows are compared. None when either distance is the same for every pair (a single
    message or a single meaning)."""
    symbols, meanings = symbols[:MAX_PAIRS_ROWS], meanings[:MAX_PAIRS_ROWS]
    if symbols.shape[0] < 3:
        return None
    m = meanings.reshape(meanings.shape[0], -1)
    i, j = torch.triu_indices(symbols.shape[0], symbols.shape[0], offset=1)
    message_distance = (symbols[i] != symbols[j]).sum(-1)
    meaning_distance = (m[i] != m[j]).sum(-1)
    return spearman(meaning_distance, message_distance)


def position_entropy(symbols: torch.Tensor) -> list[float]:
    """The entropy (bits) of the symbol at each position: 0 for a position that never changes, log2(k)
    for one that uses k symbols equally often."""
    out = []
    for k in range(symbols.shape[1]):
        _, counts = torch.unique(symbols[:, k], return_counts=True)
        p = counts.double() / counts.sum()
        out.append(float(-(p * p.log2()).sum()) + 0.0)  # + 0.0: no -0.0 for a constant position
    return out


def meaning_table(symbols: torch.Tensor, meanings: torch.Tensor) -> list[dict[str, Any]]:
    """Each distinct message, most used first: how often it was sent (``count``), the meaning it was most
    often sent for (``meaning``) and that meaning's share of its uses (``share``: 1.0 for a message that
    always means the same thing)."""
    strings = message_strings(symbols)
    by_message: dict[str, dict[int, int]] = {}
    for s, meaning in zip(strings, meanings.long().tolist(), strict=True):
        counts = by_message.setdefault(s, {})
        counts[meaning] = counts.get(meaning, 0) + 1
    rows = []
    for s, counts in by_message.items():
        total = sum(counts.values())
        top = max(sorted(counts), key=lambda k: counts[k])
        rows.append({"message": s, "count": total, "meaning": top, "share": counts[top] / total})
    return sorted(rows, key=lambda r: (-r["count"], r["message"]))


def protocol_metrics(symbols: torch.Tensor, meanings: torch.Tensor) -> dict[str, Any]:
    """The three metrics together, as the final results JSON carries them per channel."""
    return {"topographic_similarity": topographic_similarity(symbols, meanings),
            "position_entropy_bits": position_entropy(symbols),
            "distinct_messages": len(set(message_strings(symbols))),
            "messages": meaning_table(symbols, meanings)}


def protocol_markdown(metrics: dict[str, Any], meaning_name: str, max_rows: int = 40) -> str:
    """The metrics as TensorBoard markdown: topographic similarity, the per-position entropy, then the
    message → meaning table (its ``max_rows`` most used messages)."""
    topsim = metrics["topographic_similarity"]
    entropy = ", ".join(f"{h:.2f}" for h in metrics["position_entropy_bits"])
    lines = [f"topographic similarity: **{'n/a' if topsim is None else f'{topsim:.3f}'}**  ",
             f"entropy per position (bits): {entropy}  ",
             f"distinct messages: {metrics['distinct_messages']}", "",
             f"| message | count | most frequent {meaning_name} | its share |", "|---|---|---|---|"]
    rows = metrics["messages"]
    for r in rows[:max_rows]:
        lines.append(f"| `{r['message']}` | {r['count']} | {r['meaning']} | {r['share']:.2f} |")
    if len(rows) > max_rows:
        rest = sum(r["count"] for r in rows[max_rows:])
        lines.append(f"| … {len(rows) - max_rows} more | {rest} | | |")
    return "\n".join(lines)


