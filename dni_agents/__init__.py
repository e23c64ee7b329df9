"""dni-agents: agents that talk through decoupled neural interfaces."""
__version__ = "0.1.0"
