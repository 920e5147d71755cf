"""Which of a model's callbacks ``configure_callbacks`` still has to return to a trainer.

Lightning calls ``configure_callbacks`` at the start of every fit, validate, test and predict, and replaces the
trainer's callbacks of the same types by what it returns, logging "The following callbacks returned in
``LightningModule.configure_callbacks`` will override existing callbacks passed to Trainer: ...". anomalib's Engine
keeps one trainer, so a test or predict after a fit would get that line for callbacks the same model attached in the
fit. :func:`callbacks_to_attach` returns only what is not attached yet: the model's components (pre-processor,
post-processor, evaluator, visualizer) unless the very same objects are attached, and the model's own callbacks
unless ones this model made are. A callback of another model or of the user is still replaced, and Lightning still
says so.

Example:
    >>> from lightning.pytorch import Callback
    >>> class Host:
    ...     _trainer = None
    >>> [type(c).__name__ for c in callbacks_to_attach(Host(), [], lambda: [Callback()])]
    ['Callback']

"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

from lightning.pytorch import Callback

_MADE_FOR: weakref.WeakKeyDictionary[Callback, weakref.ref] = weakref.WeakKeyDictionary()
"""The model each own callback was made for (weak both ways: nothing is kept alive by this table)."""


def callbacks_to_attach(
    module: Any, components: Sequence[Callback], make_own: Callable[[], list[Callback]]
) -> list[Callback]:
    """``components`` and ``make_own()``'s callbacks, less those already attached to ``module``'s trainer.

    Args:
        module: The ``LightningModule`` (its ``_trainer``, set while Lightning calls ``configure_callbacks``).
        components: anomalib's components that are callbacks (``AnomalibModule.configure_callbacks``).
        make_own: Makes the model's own callbacks (fresh instances); called only when some are missing.

    """
    trainer = getattr(module, "_trainer", None)
    attached = list(trainer.callbacks) if trainer is not None else []
    attached_ids = {id(callback) for callback in attached}
    mine = {type(callback) for callback in attached if _owner(callback) is module}
    missing = [callback for callback in components if id(callback) not in attached_ids]
    for callback in make_own():
        if type(callback) not in mine:
            _MADE_FOR[callback] = weakref.ref(module)
            missing.append(callback)
    return missing


def _owner(callback: Callback) -> Any:
    reference = _MADE_FOR.get(callback)
    return reference() if reference is not None else None
