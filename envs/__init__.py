"""Our own PettingZoo environments (import name: dni_envs)."""
