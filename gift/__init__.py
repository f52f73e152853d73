"""gift: grounded instruction fine-tuning (GIFT4Code) of code LLMs in JAX/Flax."""

__version__ = "0.1.0"


class UserError(Exception):
  """An expected mistake in what the user gave (a file, a config key or value, an input line).

  `gift <command>` prints the message as one line, `gift <command>: <message>`, and exits with
  status 2; the message says what was wrong, where (file, key, line) and what was expected.
  Anything else that escapes a command is a bug and keeps its traceback (as does every error
  with GIFT_DEBUG=1)."""


class InputError(UserError, ValueError):
  """A malformed input (file contents, an unsupported model, a bad value)."""
