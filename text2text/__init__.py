"""text2text: T5 text-to-text multitask training on JAX/Flax (see README.md)."""
from text2text import host_memory

host_memory.configure_malloc()
