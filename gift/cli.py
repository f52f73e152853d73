"""`gift <command> [args]`: one entry point, each command implemented in its own module.

Every command is a function `main(argv: list[str]) -> int | None` in the module named below; it
is imported only when run, so `gift exec` never pays for importing JAX.
"""

from __future__ import annotations

import importlib
import os
import sys

from gift import UserError

COMMANDS: dict[str, tuple[str, str]] = {
  # name: (module:function, one-line help)
  "quickstart": ("gift.quickstart:main", "the whole GIFT loop on CPU: data, train, eval, report"),
  "plan": ("gift.plan:main", "parameter count, FLOPs/token and memory per device of a config"),
  "tokenizer": ("gift.tokenizer:main", "train a code-friendly SentencePiece model"),
  "build-data": ("gift.synth.build:main", "build GIFT records from executed samples"),
  "train": ("gift.train:main", "train or fine-tune a model from a config"),
  "sample": ("gift.sample:main", "sample completions from a checkpoint"),
  "serve": ("gift.serve:main", "OpenAI-compatible HTTP server (needs gift[serve])"),
  "eval": ("gift.eval.cli:main", "execution-based evaluation (DS-1000, ARCADE-style)"),
  "exec": ("gift.execution.cli:main", "run untrusted code in the sandbox, print a JSON verdict"),
  "runtime": ("gift.execution.runtime:main", "create a pinned evaluation runtime (virtualenv)"),
  "import-hf": ("gift.hf:import_main",
                "convert a Hugging Face checkpoint (Llama, Qwen, Gemma, StarCoder2, ...) to gift"),
  "export-hf": ("gift.hf:export_main", "convert a gift checkpoint to Hugging Face format"),
}

# Commands that run model steps: they re-execute once with gift.cpu_env's malloc tunables.
# Not `serve`: its warm-up compiles ~100 shapes on many threads, which one shared malloc arena
# slows (start-up 96 -> 140 s, benchmarks/bench_serve.py's model), and it serves no faster.
CPU_HEAVY = ("quickstart", "train", "sample")


def _usage() -> str:
  width = max(map(len, COMMANDS))
  lines = ["usage: gift <command> [args]  (gift <command> --help for its flags)", "", "commands:"]
  lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    import difflib

    close = difflib.get_close_matches(name, COMMANDS, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    print(f"gift: unknown command {name!r}.{hint}\n\n{_usage()}", file=sys.stderr)
    return 2
  if name in CPU_HEAVY:
    from gift import cpu_env

    cpu_env.reexec_with_cpu_env()  # once, before any work: faster XLA:CPU (see cpu_env)
  module_name, fn_name = COMMANDS[name][0].split(":")
  fn = getattr(importlib.import_module(module_name), fn_name)
  if os.environ.get("GIFT_DEBUG", "0") not in ("", "0"):
    return int(fn(rest) or 0)  # every error with its traceback
  try:
    return int(fn(rest) or 0)
  except USER_ERRORS as e:
    print(f"gift {_command_name(name, rest)}: {_one_line(e)}", file=sys.stderr)
    return 2


# What a user's input causes: `gift.UserError` (ConfigError, InputError, ...) and a file that
# is missing, is a directory, exists already or cannot be read. Anything else is a bug and keeps
# its traceback.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               FileExistsError, PermissionError)


def _command_name(name: str, rest: list[str]) -> str:
  """"eval ds1000" for commands with a subcommand."""
  return f"{name} {rest[0]}" if rest and name in ("eval", "runtime", "tokenizer") and \
      not rest[0].startswith("-") else name


def _one_line(e: BaseException) -> str:
  if isinstance(e, OSError) and e.filename and e.strerror:
    return f"{e.filename}: {e.strerror}"  # e.g. "[Errno 2] No such file..." made readable
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  return " ".join(text.split()) or type(e).__name__


if __name__ == "__main__":
  sys.exit(main())
