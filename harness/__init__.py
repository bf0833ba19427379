"""stigmergy-harness: many LLM coding agents on one git repository, no orchestrator."""

__version__ = "0.1.0"
