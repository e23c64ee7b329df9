"""Exact comparison of saved states (checkpoints), for the tests that claim "resume equals uninterrupted"."""

from __future__ import annotations

import torch


def assert_equal_states(got: object, expected: object, path: str = "") -> None:
    """Every tensor bit for bit equal, every other value equal, the same keys everywhere; a failure names
    the first differing entry by its path (``.agents.layer1.module.0.weight``)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), path
        for key in expected:
            assert_equal_states(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, expected), path
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), path
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_equal_states(a, b, f"{path}[{i}]")
    else:
        assert got == expected, path
