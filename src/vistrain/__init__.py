"""vistrain: a folder of photos in, a trained, explained, deployable image classifier out (CPU, offline)."""

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "load", "predict", "train"]


def __getattr__(name: str):
    # The API pulls in torch; `import vistrain` alone (e.g. for the version) stays light.
    if name in ("train", "load", "evaluate", "predict", "Run"):
        from vistrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'vistrain' has no attribute {name!r}")
