"""``python -m harness <subcommand> ...``: one entry point, one module per subcommand."""

from __future__ import annotations

import importlib
import sys

# subcommand -> "module:function"; each function takes argv (without the subcommand) and returns an exit code
SUBCOMMANDS = {
    "run": "harness.__main__:_run",
    "score": "harness.__main__:_score",
    "table": "harness.tables:main",
    "compare": "harness.compare:main",
    "report": "harness.report:main",
    "train-lora": "harness.train_lora:main",
    "testbed": "harness.toy.build:main",
    "bench": "harness.bench:main",
    "demo": "harness.demo:main",
    "sets": "harness.inspect_testbed:main",
}


def _hydra(app_name: str, argv: list[str]) -> int:
    from harness import cli

    sys.argv = [f"harness {app_name}", *argv]  # Hydra parses sys.argv itself
    getattr(cli, f"{app_name}_app")()
    return 0


def _run(argv: list[str]) -> int:
    return _hydra("run", argv)


def _score(argv: list[str]) -> int:
    return _hydra("score", argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: python -m harness {" + ",".join(SUBCOMMANDS) + "} ...")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown subcommand {argv[0]!r}")
            return 2
        return 0
    module_name, function_name = SUBCOMMANDS[argv[0]].split(":")
    return int(getattr(importlib.import_module(module_name), function_name)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
