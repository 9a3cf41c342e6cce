"""Metric plugins. ``harness.scoring.metric_class(name)`` imports ``harness/metrics/<name>.py`` on first use,
so a built-in metric's heavy imports (open_clip, insightface, transformers) load only when it is selected."""
