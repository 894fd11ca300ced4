"""Task-independent command-line tools reached as ``repsuite <tool>``."""
