"""`gift exec`: run untrusted code in the sandbox and print the verdict as one JSON object.

    gift exec --context ctx.py --code code.py [--output_var result] [--timeout_s 5] [--env K=V]

`--output_var ''` means the value of the code's final expression (notebook Out[] semantics).
The result is printed as a codec tree (lossless, data only) plus its repr. Exit status 0 when
the verdict is `ok`, 1 otherwise, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import sys

import gift
from gift import config as gift_config


def _parser() -> argparse.ArgumentParser:
  p = gift.ArgumentParser(prog="gift exec", description=__doc__.split("\n\n")[0])
  p.add_argument("--context", default=None, help="file with the context (notebook prefix) code")
  p.add_argument("--code", required=True, help="file with the code to run")
  p.add_argument("--output_var", default="result",
                 help="variable holding the result; '' = the final expression's value")
  p.add_argument("--timeout_s", type=float, default=None, help="wall clock limit per job")
  p.add_argument("--memory_mb", type=int, default=None, help="address-space limit")
  p.add_argument("--python", default=None, help="interpreter for the sandbox zygote")
  p.add_argument("--env", action="append", default=[], metavar="K=V",
                 help="environment variable passed to the job (repeatable)")
  return p


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  env = {}
  for item in args.env:
    key, sep, value = item.partition("=")
    if not sep or not key:
      print(f"gift exec: --env {item!r} is not of the form K=V", file=sys.stderr)
      return 2
    env[key] = value
  try:
    context = open(args.context).read() if args.context else ""
    code = open(args.code).read()
  except OSError as e:
    print(f"gift exec: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
    return 2
  from gift.execution.sandbox import Sandbox

  cfg = gift_config.base_config().execution
  with Sandbox(num_workers=1, python=args.python or cfg.python or None,
               timeout_s=args.timeout_s or cfg.timeout_s,
               memory_mb=args.memory_mb or cfg.memory_mb,
               output_limit_bytes=cfg.output_limit_bytes) as sandbox:
    verdict = sandbox.run(context, code, output_var=args.output_var or None, env=env)
  print(json.dumps(verdict.to_json()))
  return 0 if verdict.ok else 1
