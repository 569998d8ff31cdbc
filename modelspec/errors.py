"""The root of every error modelspec raises on purpose, so a caller can catch them all at once::

    try:
        model = ms.build(text, backend="torch")
    except ms.ModelspecError as e:
        ...

Each part raises its own subclass: `SpecError` (an invalid spec, with diagnostics),
`BackendError` (an unknown backend or a missing framework), `DataError` (data that cannot
be loaded or does not fit), `CommandError` (the command line) and `UnsupportedError` (a
Keras model a spec cannot express). Nothing is imported here, so any module may import it.
"""


class ModelspecError(Exception):
    """Something modelspec refused or could not do, with a message meant for the user."""


def one_line(e: object) -> str:
    """An exception's message on one line (a framework's may span several), or its class name."""
    return " ".join(str(e).split()) or type(e).__name__
