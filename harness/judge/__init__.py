"""LLM / VLM judge: rubrics (prompt text + answer schema), tolerant answer parsing, an on-disk call cache
and an OpenAI-compatible client. The metric plugin that uses them is ``harness.metrics.llm_judge``."""
