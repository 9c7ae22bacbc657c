"""Errors caused by the user's input, reported as one message without a traceback."""


class UserError(Exception):
  """A problem the user can fix; the message names it and the fix."""

  exit_code = 1
  label = "error"  # What the command line prints before the message.


class ConfigError(UserError):
  """A config value that is missing, of the wrong type or out of range."""

  exit_code = 2


class DataError(UserError):
  """The dataset is missing, unreadable or not what the config expects."""
