"""Errors a user can act on.

``InputError`` means the user's input (a config value, a prompts file, a model name) is wrong; its
message names the file, line or field. The CLI prints it without a traceback and exits with code 2,
before any model is loaded.
"""


class InputError(ValueError):
    """Bad user input: the message says which file, line or field, and what was expected."""
