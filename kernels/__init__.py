"""Compiled kernels of crmlab (installed as ``crmlab.kernels``).

Conventions: every kernel is a private ``@njit(cache=True)`` function taking and returning NumPy
arrays (strings as a uint8 arena plus offsets, baskets as CSR); a thin public wrapper next to it
validates shapes and dtypes and documents. ``tests/naive.py`` holds a plain reference for each.
"""
