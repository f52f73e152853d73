"""`gift serve`: an OpenAI-compatible HTTP server (app.py) over a continuous-batching engine
(engine.py). The HTTP stack (FastAPI, uvicorn) is the optional extra `gift[serve]`, imported
only by app.py."""
