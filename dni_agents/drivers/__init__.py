"""The drivers (``ff``, ``rnn``, ``hier``, ``marl``) and what a driver of one's own builds on.

A driver is a module that :mod:`dni_agents.registry` names (ours, or another package's entry point). What
it needs from this package to turn a config into agents and interfaces:

* :func:`build_interface`: the interface ``sender -> receiver`` as the config describes it (mode, utility
  model and its optimizer, scale, warm-up, synthetic input);
* :func:`agent_optimizer` / :func:`make_optimizer`: an agent's optimizer from ``trainer`` (and its
  ``agents`` entry);
* :class:`dni_agents.config.Section`: the base class of its config section (``SECTION``).

The CLI opens the run folder and writes ``config.yaml`` into it before it calls the driver's ``train``;
``tests/user_driver.py`` is a whole driver built on these alone.
"""

from .common import agent_optimizer, build_interface, make_optimizer

__all__ = ["agent_optimizer", "build_interface", "make_optimizer"]
