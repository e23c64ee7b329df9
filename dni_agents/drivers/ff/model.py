"""The feed-forward system: the layers (MLP or CNN), one agent each, and the interfaces between them."""

from __future__ import annotations

import torch
from torch import nn

from ...config import Config, agent_names
from ...core import Agent, System
from ...data import ImageDataset
from ..common import agent_optimizer, build_interface

METHODS: dict[str, list[str]] = {
    "backprop": ["interface_defaults.mode=backprop"],
    "dni": ["interface_defaults.mode=dni"],
    "cdni": ["interface_defaults.mode=cdni"],
    "unlock": ["interface_defaults.mode=cdni", "interface_defaults.synthetic_input={kind: mlp}"],
    "top-only": ["interface_defaults.mode=none"],
}
CHECKPOINT = "checkpoint.pt"


def build_layers(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> list[nn.Module]:
    """One module per agent. MLP: [Linear, BN, ReLU] × (layers-1), then Linear. CNN: [Conv5×5, BN, ReLU,
    MaxPool] × (layers-1) (pooling in the first two blocks), then Linear."""
    f = cfg.ff
    layers: list[nn.Module] = []
    if f.model == "mlp":
        width = int(torch.tensor(input_shape).prod())
        for i in range(f.layers - 1):
            block: list[nn.Module] = [nn.Flatten()] if i == 0 else []
            block.append(nn.Linear(width, f.hidden))
            if f.batch_norm:
                block.append(nn.BatchNorm1d(f.hidden))
            layers.append(nn.Sequential(*block, nn.ReLU()))
            width = f.hidden
        layers.append(nn.Linear(width, num_classes))
        return layers
    channels, height, width = input_shape
    for i in range(f.layers - 1):
        block = [nn.Conv2d(channels, f.hidden, 5, padding=2)]
        if f.batch_norm:
            block.append(nn.BatchNorm2d(f.hidden))
        block.append(nn.ReLU())
        if i < 2:
            block.append(nn.MaxPool2d(3, stride=2, padding=1))
            height, width = (height + 1) // 2, (width + 1) // 2
        layers.append(nn.Sequential(*block))
        channels = f.hidden
    layers.append(nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes)))
    return layers


def message_shapes(layers: list[nn.Module], input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shape (without batch) of what each layer sends; found by one dry forward pass in eval mode."""
    shapes, h = [], torch.zeros(2, *input_shape)
    with torch.no_grad():
        for layer in layers:
            was = layer.training
            h = layer.eval()(h)
            layer.train(was)
            shapes.append(tuple(h.shape[1:]))
    return shapes


def build_system(cfg: Config, data: ImageDataset, device: torch.device) -> System:
    """Agents layer0..layerN-1, each with its own optimizer, and an interface between neighbours."""
    torch.manual_seed(cfg.seed)
    names = agent_names(cfg)
    layers = build_layers(cfg, data.input_shape, data.num_classes)
    shapes = message_shapes(layers, data.input_shape)
    overrides = {a.name: a for a in cfg.agents}
    agents, interfaces = [], []
    for i, (name, layer) in enumerate(zip(names, layers, strict=True)):
        layer.to(device)
        period = overrides[name].period if name in overrides else 1
        agents.append(Agent(name, layer, agent_optimizer(cfg, name, layer.parameters()), period=period))
        if i + 1 < len(names):
            interfaces.append(
                build_interface(
                    cfg, name, names[i + 1], shapes[i], device,
                    context_dim=data.num_classes, source_shape=data.input_shape,
                )
            )
    return System(agents, interfaces, on_nonfinite=cfg.trainer.on_nonfinite)
