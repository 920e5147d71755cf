"""A random stream of its own for the synthetic anomalies and rotations, saved in checkpoints.

Training draws its anomalies inside :class:`RandomStream`: a generator state seeded from torch's seed (what
``lightning.seed_everything`` sets), separate from the global generator. So the same seed gives the same anomalies,
the data loader's shuffling (torch's global generator) does not shift them, and a resumed run continues the same
sequence.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class RandomStream:
    """A torch random stream of its own: code run inside :meth:`active` draws from it, not from the global generator.

    On entry the global generator states (CPU, and the device's for an accelerator) are set aside and the stream's
    states put in their place; on exit the stream keeps the advanced states and the global ones are put back, exactly
    as they were. Its :meth:`state_dict` goes into checkpoints so that a resumed run continues the stream.

    Args:
        seed: Seed of the stream (any integer; reduced modulo 2**63).

    Example:
        >>> stream, other = RandomStream(seed=7), RandomStream(seed=7)
        >>> with stream.active():
        ...     first = torch.rand(3)
        >>> with other.active():
        ...     again = torch.rand(3)
        >>> torch.equal(first, again)
        True

    """

    SALT = 0x9E3779B97F4A7C15
    """Mixed into torch's seed by :meth:`from_torch_seed`, so that the stream differs from the global sequence."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed) % 2**63
        self._states: dict[str, torch.Tensor] = {"cpu": torch.Generator().manual_seed(self.seed).get_state()}

    @classmethod
    def from_torch_seed(cls, offset: int = 0) -> "RandomStream":
        """A stream seeded from ``torch.initial_seed()`` (set by ``seed_everything``) plus ``offset``.

        Draws nothing from torch's generators.
        """
        return cls((torch.initial_seed() ^ cls.SALT) + offset)

    @contextmanager
    def active(self, device: torch.device | str = "cpu") -> Iterator[None]:
        """Make the stream torch's current generator (CPU, plus ``device``'s if it is an accelerator)."""
        device = torch.device(device)
        module = None if device.type in {"cpu", "meta"} else torch.get_device_module(device.type)
        index = (device.index if device.index is not None else module.current_device()) if module else None
        saved_cpu = torch.get_rng_state()
        saved_device = module.get_rng_state(index) if module else None
        torch.set_rng_state(self._states["cpu"])
        if module:
            state = self._states.get(device.type)
            if state is None:
                state = torch.Generator(device=device).manual_seed(self.seed).get_state()
            module.set_rng_state(state, index)
        try:
            yield
        finally:
            self._states["cpu"] = torch.get_rng_state()
            torch.set_rng_state(saved_cpu)
            if module:
                self._states[device.type] = module.get_rng_state(index)
                module.set_rng_state(saved_device, index)

    def state_dict(self) -> dict[str, Any]:
        """The seed and the generator states (copies), for a checkpoint."""
        return {"seed": self.seed, "states": {key: state.clone() for key, state in self._states.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        self.seed = int(state["seed"])
        self._states = {key: value.clone() for key, value in state["states"].items()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "RandomStream":
        """A stream that continues from a :meth:`state_dict`."""
        stream = cls(int(state["seed"]))
        stream.load_state_dict(state)
        return stream


RANDOM_STATE_KEY = "two_stage_random_state"
"""Checkpoint key of the anomaly stream's state and torch's global CPU generator state (data order)."""


def checkpoint_random_state(stream_state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint keeps: the anomaly stream's state and torch's global CPU generator (the data order)."""
    return {"anomaly_stream": stream_state, "global_cpu": torch.get_rng_state()}


def start_stream(resumed_state: dict[str, Any] | None, step: int, processes: int) -> RandomStream:
    """The anomaly stream of a run starting (or resuming) at optimiser step ``step``.

    A single-process run resumed from a checkpoint continues the saved stream exactly. A fresh run starts from the
    seed; a resumed DDP run (its checkpoint holds rank 0's stream only) starts each process's stream anew, moved on
    by ``step`` so that it does not repeat the first steps' anomalies.
    """
    if resumed_state is not None and processes == 1:
        return RandomStream.from_state_dict(resumed_state)
    return RandomStream.from_torch_seed(offset=step)
