"""`gift serve`: an OpenAI-compatible HTTP server (app.py) over a continuous-batching engine
(engine.py). The HTTP stack (FastAPI, uvicorn) is the optional extra `gift[serve]`, imported
only by app.py; `main` says how to install it when it is missing."""
from __future__ import annotations


def main(argv: list[str]) -> int:
  try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
  except ImportError as e:
    raise SystemExit(f"gift serve needs the serve extra ({e.name} is not installed): "
                     'pip install "gift[serve]"') from None
  from gift.serve import app
  return app.main(argv)
