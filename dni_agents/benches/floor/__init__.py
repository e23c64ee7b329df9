"""The plain-PyTorch floor of the multi-agent driver's PPO update, written without the framework (no System,
Interface or Tick): :mod:`.model` its networks and utility models, built from a config with our networks'
weights; :mod:`.learn` one update, top to bottom. ``dni-agents bench speed`` times ours against it."""

from .learn import floor_update
from .model import Floor, make_floor

__all__ = ["Floor", "floor_update", "make_floor"]
