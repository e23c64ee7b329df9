"""``simple_speaker_listener_v4``: mpe2's simple speaker–listener batched in torch, PettingZoo's module
convention plus ``vector_env(num_envs, **kwargs)`` (all copies in lockstep, torch tensors). The table is
:mod:`dni_envs.simple_speaker_listener`'s (the implementation); the version is mpe2's, whose
``simple_speaker_listener_v4`` it equals step for step.

| Import       | ``from dni_envs import simple_speaker_listener_v4``                              |
|--------------|----------------------------------------------------------------------------------|
| Actions      | speaker ``Discrete(3)`` (say 0/1/2); listener ``Discrete(5)`` (moves); with      |
|              | ``continuous_actions=True`` speaker ``Box(0, 1, (3,))`` (utterance), listener    |
|              | ``Box(0, 1, (5,))`` (force ``5 · (a2 − a1, a4 − a3)``)                           |
| Parallel API | Yes (``parallel_env``, one copy); AEC: ``env``; batched: ``vector_env``          |
| Agents       | ``speaker_0``, ``listener_0``                                                    |
| Observation  | speaker ``Box(3)`` goal colour; listener ``Box(11)`` velocity, landmarks, word   |
| Reward       | both: −(squared distance from the listener to the goal landmark)                 |
| Arguments    | ``max_cycles=25, continuous_actions=False, device="cpu"``                        |
"""

from __future__ import annotations

from dni_envs._vector import versioned_vector
from dni_envs.simple_speaker_listener import SimpleSpeakerListener

raw_env, parallel_env, env, vector_env = versioned_vector(SimpleSpeakerListener)

__all__ = ["env", "parallel_env", "raw_env", "vector_env"]
