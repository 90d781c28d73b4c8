"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class RiclError(ValueError):
    """Bad input or state the user can fix: the message says what was wrong and what was expected."""


class StaleIndexError(RiclError):
    """A save refused: the index on disk was changed by another writer since this copy was loaded."""


class NotFittedYetError(RiclError):
    """A select refused for now: the fit it needs runs in the background (DemoSelector(background_fits=True))."""
