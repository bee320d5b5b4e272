"""The one error type the image reader raises; its message is written for a person, never a traceback."""


class ImageReadError(ValueError):
    """An input that cannot become a model-ready slice; ``str(error)`` says why and what would work."""
