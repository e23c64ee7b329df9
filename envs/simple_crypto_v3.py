"""``simple_crypto_v3``: mpe2's simple crypto batched in torch, PettingZoo's module convention plus
``vector_env(num_envs, **kwargs)`` (all copies in lockstep, torch tensors). The table is
:mod:`dni_envs.simple_crypto`'s (the implementation); the version is mpe2's, whose ``simple_crypto_v3`` it
equals step for step.

| Import       | ``from dni_envs import simple_crypto_v3``                                        |
|--------------|----------------------------------------------------------------------------------|
| Actions      | every agent ``Discrete(4)``: say word 0..3 (no one moves); with                  |
|              | ``continuous_actions=True`` ``Box(0, 1, (4,))``: the utterance itself            |
| Parallel API | Yes (``parallel_env``, one copy); AEC: ``env``; batched: ``vector_env``          |
| Agents       | ``eve_0`` (adversary), ``bob_0``, ``alice_0`` (speaker)                          |
| Observation  | alice ``Box(8)`` message, key; bob ``Box(8)`` key, alice's word; eve ``Box(4)``  |
|              | alice's word (comm slots: ``comm_slice``, bob ``[4, 8)``, eve ``[0, 4)``)        |
| Reward       | alice and bob: eve's error − bob's error; eve: −eve's error (an error: 0 when    |
|              | the listener's word is the message, else 2; continuous: the squared distance of  |
|              | its vector to the message's one-hot, 0 for an all-zero one)                      |
| Arguments    | ``max_cycles=25, continuous_actions=False, device="cpu"``                        |
"""

from __future__ import annotations

from dni_envs._vector import versioned_vector
from dni_envs.simple_crypto import SimpleCrypto

raw_env, parallel_env, env, vector_env = versioned_vector(SimpleCrypto)

__all__ = ["env", "parallel_env", "raw_env", "vector_env"]
