#!/usr/bin/env python3
"""The linker's symbol order for the PGO build of `warden` (bench/pgo.sh).

    pgo_order.py SIDECAR_SHOW ALL_SHOW > order.txt

Each argument is the output of `llvm-profdata show --all-functions --counts` for one merged
profile: the sidecars' own processes, and every process of the training run. Prints one symbol a
line: the functions the sidecars ran, hottest first, then those only other `warden` commands ran
(the CA, the agent, the CLI), hottest first. The linker (lld `--symbol-ordering-file`) places them
in that order at the start of `.text`, so the code a sidecar runs sits together instead of spread
over the executable among code it never runs — fewer pages of it resident — and its hot loops
share cache lines and TLB entries. Functions no training process ran keep the compiler's order.
"""

import re
import sys


def executed(path):
    """{symbol: highest block count} of the functions with any count above zero."""
    out = {}
    name = None
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        sys.exit(f"error: {path}: cannot read it ({e})")
    for line in lines:
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            # Local functions are named "<file or unit>;<symbol>" in the profile.
            name = line.strip()[:-1].rsplit(";", 1)[-1]
        elif name is not None and line.lstrip().startswith("Block counts:"):
            hottest = max((int(n) for n in re.findall(r"\d+", line)), default=0)
            if hottest > 0:
                out[name] = max(hottest, out.get(name, 0))
            name = None
    return out


def main(argv):
    if len(argv) != 3:
        sys.exit("usage: pgo_order.py SIDECAR_SHOW ALL_SHOW  (llvm-profdata show --all-functions --counts)")
    sidecar, everyone = executed(argv[1]), executed(argv[2])
    if not sidecar:
        sys.exit(f"error: {argv[1]}: no function with a count above zero (not a `show --counts` output?)")
    first = sorted(sidecar, key=lambda n: (-sidecar[n], n))
    rest = sorted((n for n in everyone if n not in sidecar), key=lambda n: (-everyone[n], n))
    sys.stdout.write("".join(n + "\n" for n in first + rest))
    print(f"order: {len(first)} functions the sidecars ran, then {len(rest)} others", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
