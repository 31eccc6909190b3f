"""scikit-learn's parameter protocol without importing scikit-learn (record matching starts lean).

Estimators store their constructor arguments unchanged under the same names and learn attributes
ending in ``_`` only in ``fit``; :class:`Params` adds ``get_params`` / ``set_params`` (so
``sklearn.base.clone`` and grid searches work) and :func:`reset` forgets what a fit learned.
"""
from __future__ import annotations

import inspect


class Params:
    """``get_params`` / ``set_params`` from the constructor's signature, as in ``sklearn.base.BaseEstimator``."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict:
        out = {}
        for name in self._param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update({f"{name}__{k}": v for k, v in value.get_params().items()})
            out[name] = value
        return out

    def set_params(self, **params):
        valid = self._param_names()
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid: {', '.join(valid)}")
            if sub:
                getattr(self, name).set_params(**{sub: value})
            else:
                setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({args})"


def reset(estimator) -> None:
    """Forget every learned attribute (name ending in ``_``), so that a refit equals a fresh fit."""
    for name in [k for k in vars(estimator) if k.endswith("_") and not k.startswith("__")]:
        delattr(estimator, name)
