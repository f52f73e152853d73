"""gift: grounded instruction fine-tuning (GIFT4Code) of code LLMs in JAX/Flax."""

import argparse

__version__ = "0.1.0"


class UserError(Exception):
  """An expected mistake in what the user gave (a file, a config key or value, an input line).

  `gift <command>` prints the message as one line, `gift <command>: <message>`, and exits with
  status 2; the message says what was wrong, where (file, key, line) and what was expected.
  Anything else that escapes a command is a bug and keeps its traceback (as does every error
  with GIFT_DEBUG=1)."""


class InputError(UserError, ValueError):
  """A malformed input (file contents, an unsupported model, a bad value)."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse with gift's one-line errors: a bad command line (a missing or unknown flag, a
  wrongly typed value) raises UserError, which `gift <command>` prints as one line
  `gift <command>: <what argparse says> (see gift <command> --help)` with exit status 2 (not
  argparse's usage block). Subcommand parsers are of this class too."""

  def error(self, message: str):
    raise UserError(f"{message} (see {self.prog} --help)")
