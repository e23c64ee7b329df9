"""The ``ff:`` section of a config: the data set and the network the chain of agents is cut from."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ...config import Config, PosInt, _Strict


class FFConfig(_Strict):
    dataset: Literal["digits", "fashion_mnist", "mnist", "cifar10"] = "digits"
    data_root: str | None = None
    model: Literal["mlp", "cnn"] = "mlp"
    hidden: PosInt = 256
    layers: Annotated[int, Field(ge=2, le=12)] = 3  # each layer is one agent: layer0..layer{n-1}
    batch_norm: bool = True

SECTION = FFConfig


def agent_names(cfg: Config) -> list[str]:
    """One agent per layer: ``layer0`` … ``layer{n-1}``."""
    return [f"layer{i}" for i in range(cfg.ff.layers)]
