"""``switch_riddle_v0``: the switch riddle (Foerster et al. 2016), PettingZoo's module convention.

| Import             | ``from dni_envs import switch_riddle_v0``                                    |
|--------------------|------------------------------------------------------------------------------|
| Actions            | ``Discrete(4)``: ``tell = a // 2``, ``switch = a % 2`` (the one in the room acts) |
| Parallel API       | Yes (``parallel_env``); AEC: ``env`` (``parallel_to_aec``)                   |
| Agents             | ``prisoner_0 … prisoner_{n-1}`` (``n_agents``, default 3)                    |
| Episode length     | at most ``max_steps`` days (default ``4n - 6``); ends at the first Tell      |
| Observation        | ``Box(0, 1, (3,), float32)``: in_room, the bulb (comm slice 1:2), day / max_steps |
| Reward             | shared: Tell +1 if everyone has visited, else −1; 0 if time runs out         |
| Private info       | ``infos[agent]["has_visited"]``                                              |
| Arguments          | ``n_agents=3, max_steps=None, render_mode=None`` (``"ansi"``)                |

The bulb is the only channel: what the prisoner in the room sets is what the next one in the room reads.
The implementation is :mod:`dni_envs.switch_riddle`; a change in its behaviour gets a new version here.
"""

from __future__ import annotations

from dni_envs._base import versioned
from dni_envs.switch_riddle import SwitchRiddle

raw_env, parallel_env, env = versioned(SwitchRiddle)

__all__ = ["env", "parallel_env", "raw_env"]
