"""gift: grounded instruction fine-tuning (GIFT4Code) of code LLMs in JAX/Flax."""

__version__ = "0.1.0"
