"""gift: grounded instruction fine-tuning of code LLMs in JAX/Flax."""
from setuptools import find_packages, setup

# uvicorn picks httptools (its C HTTP parser) and uvloop when installed: less CPU per streamed
# chunk, left to the model on a small host (vLLM's environment has both).
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "httptools>=0.6",
         "uvloop>=0.19; sys_platform != 'win32'"]

setup(
    name="gift",
    version="0.1.0",
    description="Grounded instruction fine-tuning (GIFT4Code) of code LLMs in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["gift", "gift.*"]),
    package_data={"gift": ["execution/*.py", "synth/data/*", "model/kernels/*.cc"]},
    install_requires=[
        "jax>=0.7.0",
        "flax>=0.11.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "sentencepiece>=0.2.0",
        "tokenizers>=0.20",
        "jinja2>=3.1.6",
        "tensorflow-datasets>=4.9.7",
        "array_record>=0.7.0",
        "importlib_resources>=6.0",
        "grain>=0.2.10",
        "pandas>=2.2",
        "numpy>=1.26",
        "ml_collections>=1.0.0",
        "absl-py>=2.1",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "safetensors>=0.4.5",
        "ml_dtypes>=0.5.0",
        "nbformat>=5.10",
        "matplotlib>=3.8",
        "pyseccomp>=0.1.2",
    ],
    extras_require={
        "beam": ["apache-beam>=2.60"],  # gift build-data / gift eval --runner beam
        # `gift serve` (gift/serve/app.py): the ASGI stack, imported only by that command.
        "serve": SERVE,
        "test": [
            "pytest>=8.0",
            "torch==2.13.0",
            "transformers>=4.50",
            "peft>=0.13",  # LoRA adapter parity (tests/test_lora_e2e.py, benchmarks/bench_lora.py)
            "ruff>=0.6",
            "apache-beam>=2.60",
            "openai>=1.0",  # the official client, against `gift serve` (tests/serve)
        ] + SERVE,
    },
    entry_points={"console_scripts": ["gift=gift.cli:main"]},
)
