"""``python -m harness sets [TESTBED] [--n 3]``: list a testbed's composition sets and their prompts."""

from __future__ import annotations

import argparse

from harness.config import load_testbed_config, testbed_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness sets", description=__doc__.splitlines()[0])
    parser.add_argument("testbed", nargs="?", default="tiny", help="name of conf/testbed/<name>.yaml")
    parser.add_argument("--n", type=int, nargs="*", default=None)
    parser.add_argument("--prompts", action="store_true", help="print each set's prompt too")
    args = parser.parse_args(argv)
    testbed = load_testbed_config(testbed_config(args.testbed))
    sets = [s for s in testbed.sets() if not args.n or s.n in args.n]
    for composition in sets:
        print(composition.id + (f"\t{testbed.prompt_for(composition)}" if args.prompts else ""))
    counts = {n: sum(1 for s in sets if s.n == n) for n in sorted({s.n for s in sets})}
    print(f"# {len(sets)} sets " + ", ".join(f"N={n}: {count}" for n, count in counts.items()))
    return 0
