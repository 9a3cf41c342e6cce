"""The toy world: a CPU-sized ComposLoRA testbed with oracle ground truth (see docs/toy-world.md and the README's "Testbeds")."""
