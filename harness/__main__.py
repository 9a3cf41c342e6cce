"""``python -m harness <subcommand> ...``: one entry point, one module per subcommand."""

from __future__ import annotations

import importlib
import sys

# subcommand -> "module:function"; each function takes argv (without the subcommand) and returns an exit code
SUBCOMMANDS = {
    "run": "harness.cli:run_main",
    "score": "harness.cli:score_main",
    "table": "harness.cli:table_main",
    "report": "harness.cli:report_main",
    "compare": "harness.compare:main",
    "train-lora": "harness.train_lora:main",
    "dataset": "harness.identity.prepare:main",
    "strength": "harness.identity.strength:main",
    "testbed": "harness.toy.build:main",
    "bench": "harness.bench:main",
    "demo": "harness.demo:main",
    "sets": "harness.inspect_testbed:main",
    "rate": "harness.rating.cli:rate_main",
    "agreement": "harness.rating.cli:agreement_main",
}


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
