"""adaptive-lora: budget-matched LoRA rank allocation studies."""

__version__ = "0.1.0"
