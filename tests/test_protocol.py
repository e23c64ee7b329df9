"""Emergent-communication metrics on hand-made protocols whose answers are known."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dni_agents.drivers.marl.protocol import (
    meaning_table,
    message_strings,
    position_entropy,
    protocol_markdown,
    protocol_metrics,
    spearman,
    topographic_similarity,
)


def test_a_compositional_code_has_topographic_similarity_one_and_a_random_one_about_zero() -> None:
    meanings = torch.tensor(list(itertools.product(range(4), range(4), range(4))))  # 64 attribute tuples
    compositional = meanings.clone()  # one position per attribute, the attribute's value as the symbol
    assert topographic_similarity(compositional, meanings) == pytest.approx(1.0)
    shuffled = compositional[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    seeds = [torch.Generator().manual_seed(s) for s in range(5)]
    random_codes = [torch.randint(0, 4, (64, 3), generator=g) for g in seeds]
    random_sims = [topographic_similarity(code, meanings) for code in random_codes]
    assert abs(sum(random_sims) / 5) < 0.05
    assert abs(topographic_similarity(shuffled, meanings)) < 0.1  # the right symbols, the wrong meanings


def test_categorical_meanings_one_message_each_is_one_and_a_constant_code_is_undefined() -> None:
    meanings = torch.arange(10).repeat(5)  # 10 digits, 5 games each
    code = torch.tensor([[d // 8, (d // 4) % 2, (d // 2) % 2, d % 2] for d in range(10)])[meanings]
    assert 0.3 < topographic_similarity(code, meanings) < 1  # same digit: 0 apart; different: 1 to 4 apart
    one_hot_like = torch.eye(10, dtype=torch.long)[meanings]  # every two messages 2 apart: perfectly so
    assert topographic_similarity(one_hot_like, meanings) == pytest.approx(1.0)
    assert topographic_similarity(torch.zeros(50, 4, dtype=torch.long), meanings) is None


def test_position_entropy_constant_zero_uniform_four_symbols_two_bits() -> None:
    symbols = torch.stack([torch.zeros(400, dtype=torch.long), torch.arange(400) % 4,
                           torch.arange(400) % 2], 1)
    assert position_entropy(symbols) == pytest.approx([0.0, 2.0, 1.0])
    assert math.copysign(1.0, position_entropy(symbols)[0]) == 1.0  # not -0.0


def test_meaning_table_counts_messages_and_their_most_frequent_meaning() -> None:
    symbols = torch.tensor([[0, 1], [0, 1], [0, 1], [1, 1], [1, 0]])
    meanings = torch.tensor([2, 2, 0, 1, 1])
    assert meaning_table(symbols, meanings) == [
        {"message": "01", "count": 3, "meaning": 2, "share": pytest.approx(2 / 3)},
        {"message": "10", "count": 1, "meaning": 1, "share": 1.0},
        {"message": "11", "count": 1, "meaning": 1, "share": 1.0},
    ]
    assert message_strings(torch.tensor([[12, 3]])) == ["12-3"]


def test_spearman_handles_ties_and_the_markdown_names_the_meaning() -> None:
    assert spearman(torch.tensor([1, 1, 2, 2]), torch.tensor([0, 0, 5, 5])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1, 2, 3]), torch.tensor([3, 2, 1])) == pytest.approx(-1.0)
    metrics = protocol_metrics(torch.tensor([[0, 1], [1, 0], [0, 1]]), torch.tensor([4, 5, 4]))
    text = protocol_markdown(metrics, "digit")
    assert "most frequent digit" in text and "| `01` | 2 | 4 | 1.00 |" in text
    assert metrics["distinct_messages"] == 2 and metrics["topographic_similarity"] == pytest.approx(1.0)
