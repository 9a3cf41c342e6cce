"""The toy world: a CPU-sized ComposLoRA testbed with oracle ground truth (see README, "Toy-world testbed")."""
