"""Hydra's instantiate, with our own errors coming out as themselves."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from src.errors import UserError


def instantiate_clear(node, **kwargs):
    """`instantiate(node, **kwargs)`; a UserError raised by the constructor (naming the
    culprit) is re-raised as itself instead of wrapped in an InstantiationException."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise
