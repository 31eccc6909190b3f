"""crmlab: one recognised customer with a full set of scores, published for every touchpoint."""
from importlib import metadata as _md

try:
    __version__ = _md.version("crmlab")
except _md.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"

from .compile_cache import configure as _configure_compile_cache

_configure_compile_cache()          # Numba's cache in the user cache folder, before any kernel loads
