"""dni-agents: agents that talk through decoupled neural interfaces."""
from .core.layer import DNI
from .runtime.blas import request_strict_products

request_strict_products()  # results that do not depend on the number of threads: runtime/blas.py
__version__ = "0.1.0"
__all__ = ["DNI"]
