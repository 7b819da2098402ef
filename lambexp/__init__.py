"""lambexp: the LAMB optimizer's experiments, and its lens for any training (``lambexp.watch``).

``watch`` is imported on first use, so that the command line starts without torch."""


def __getattr__(name: str):
    if name in ("watch", "Watch"):
        from lambexp import lens

        return getattr(lens, name)
    raise AttributeError(f"module 'lambexp' has no attribute {name!r}")
