"""The one exception a stage raises for a problem with the user's data or params."""


class PipelineError(Exception):
    """The message names the column, row or key at fault, in one line."""
