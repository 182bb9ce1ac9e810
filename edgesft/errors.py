"""User-facing errors: the CLI prints them as one line each and exits with code 2."""

from __future__ import annotations


class EdgesftError(Exception):
    """An error caused by the user's input (recipe, data file, model path), not by a bug.

    ``problems`` holds one line per problem so that a recipe with several mistakes reports all of them.
    """

    def __init__(self, *problems: str) -> None:
        self.problems = [p for p in problems if p] or ["unknown error"]
        super().__init__("\n".join(self.problems))


class RecipeError(EdgesftError):
    """A recipe that cannot be loaded or validated."""


class DataError(EdgesftError):
    """A data file that cannot be read or holds malformed rows."""


class QualityGateError(EdgesftError):
    """A stage's result broke a limit the recipe sets."""
