"""Multi-agent communication on PettingZoo: agents and channels from config, PPO, DNI between agents.

How a message travels (top to bottom, as the code below does it):

* Every network (a core ``Agent``; it may control several environment agents, which then share its
  parameters) reads its observation and writes one message per outbound channel.
* The environment is numpy and cannot carry gradients, so the framework carries the message tensor
  itself: at the next step it replaces the receiver's communication slice of the observation
  (``obs_slice``) or is appended to it. Environments whose routing changes (the switch riddle: the bulb
  goes to whoever enters the room next) say who hears whom through ``message_sources()``.
* Each update plays one episode in every environment copy (all copies start together, so ``period``,
  recurrence and exact resume are simple), then runs PPO with GAE. The learner replays the episode
  step by step; each channel is a core :class:`~dni_agents.core.Interface`: the sender gets ĝ from the
  receiver's utility model at once (``dni``/``cdni``), the true gradient as a graph edge (``backprop``,
  DIAL-style: the two agents update in one tick), or nothing (``none``). ``rial`` channels are not
  interfaces at all: the message is the sender's discrete environment action, learned by RL alone.

Nothing here knows what DNI is beyond ``tick.send`` / ``tick.receive``: the mechanics are the core's.
"""

from __future__ import annotations

from .bench import METHODS, bench
from .build import CHECKPOINT, EVAL_SEED, build
from .channels import hear, route, transmitted
from .config import AGENT_CONFIG, APPLIES_CHANNELS, SECTION, check_config
from .controls import FidelityHistory, ablation_permutation
from .dist import train_distributed
from .env import DirectParallel, eval_config, eval_env_kwargs, make_copies, make_env
from .gates import Sensitivity, context_size, gate_size, sender_context, sensitivities
from .learn import ppo_update
from .metrics import comm_metrics, entropy_bits, message_symbols, mutual_information_bits
from .parts import Channel, Episode, Group
from .policy import PolicyNet
from .ppo import advantages, ppo_loss
from .replay import batched_groups, replay
from .rollout import Player, calibrate_messages
from .train import Evaluator, SuccessTimes, episode_metrics, evaluate, evaluate_system, train

__all__ = [
    "check_config",
    "SECTION",
    "AGENT_CONFIG",
    "APPLIES_CHANNELS",
    "CHECKPOINT", "EVAL_SEED", "METHODS", "Channel", "DirectParallel", "Episode", "Evaluator",
    "FidelityHistory", "Group", "Player", "SuccessTimes", "PolicyNet", "Sensitivity", "ablation_permutation",
    "advantages", "bench", "build", "calibrate_messages", "comm_metrics", "context_size", "entropy_bits",
    "episode_metrics", "eval_config", "eval_env_kwargs", "evaluate", "evaluate_system", "gate_size", "hear",
    "make_copies", "make_env", "message_symbols", "mutual_information_bits", "batched_groups", "ppo_loss",
    "ppo_update", "replay", "route", "sender_context", "sensitivities", "train", "train_distributed",
    "transmitted",
]
