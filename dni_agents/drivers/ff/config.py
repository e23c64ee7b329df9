"""The ``ff:`` section of a config: the data set and the network the chain of agents is cut from."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ...config import Config, PosInt, _Strict


class FFConfig(_Strict):
    """A feed-forward classifier cut into agents, one per layer, each talking to the next through an
    interface (every layer decoupled); ``trainer.steps`` counts minibatches."""

    # digits ships with scikit-learn (offline); fashion_mnist from the Debian package; mnist / cifar10 from
    # ``data_root`` (a missing file is one line with its path and where to get it)
    dataset: Literal["digits", "fashion_mnist", "mnist", "cifar10"] = "digits"
    data_root: str | None = None  # the directory holding mnist's IDX files or cifar10's binary batches
    model: Literal["mlp", "cnn"] = "mlp"  # mlp: linear layers; cnn: conv blocks then a linear top
    hidden: PosInt = 256  # units per hidden layer (mlp) or channels per conv block (cnn)
    layers: Annotated[int, Field(ge=2, le=12)] = 3  # each layer is one agent: layer0..layer{n-1}
    batch_norm: bool = True  # batch-norm in every hidden layer (the paper's FCN)


SECTION = FFConfig


def agent_names(cfg: Config) -> list[str]:
    """One agent per layer: ``layer0`` … ``layer{n-1}``."""
    return [f"layer{i}" for i in range(cfg.ff.layers)]
