"""The one exception type a user can cause; the CLI prints it without a traceback."""

import difflib
from collections.abc import Iterable


class VitcError(ValueError):
    """A bad input: names the key, file or value and what was expected."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
