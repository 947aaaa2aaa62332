"""Device choice for the torch models: CUDA when present, else CPU.

>>> choose_device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import torch

__all__ = ["DeviceUnavailableError", "choose_device"]


class DeviceUnavailableError(RuntimeError):
    """A device was asked for by name but this machine does not have it."""


def choose_device(prefer: str = "auto") -> torch.device:
    """Return the device to run on.

    ``"auto"``: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``. ``"cpu"``: always the CPU.
    ``"cuda"`` or ``"cuda:N"``: that GPU, or :class:`DeviceUnavailableError` when there is none.
    """
    name = prefer.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {prefer!r} was requested but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda or 'no'}); "
                "use 'auto' or 'cpu', or install a CUDA build of torch on a machine with a GPU"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {prefer!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return device
    raise ValueError(f"unknown device preference {prefer!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
