#!/usr/bin/env python3
"""The linker's symbol order for the PGO build of `warden` (bench/pgo.sh).

    pgo_order.py INBOUND_SHOW OUTBOUND_SHOW ALL_SHOW > order.txt

Each argument is the output of `llvm-profdata show --all-functions --counts` for one profile: the
inbound sidecar's, the outbound sidecar's, and every process of the training run merged. Prints
one symbol a line, in four groups, each hottest first: the functions both sidecars ran, those only
the inbound ran, those only the outbound ran, those only other `warden` commands ran (the CA, the
agent, the CLI). The linker (lld `--symbol-ordering-file`) places them in that order at the start
of `.text`, so the code a sidecar runs sits together instead of spread over the executable among
code it never runs — fewer pages of it resident — and its hot loops share cache lines and TLB
entries; an outbound, which runs no policy engine, skips the inbound's group. Functions no
training process ran keep the compiler's order.
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
    if len(argv) != 4:
        sys.exit("usage: pgo_order.py INBOUND_SHOW OUTBOUND_SHOW ALL_SHOW"
                 "  (each: llvm-profdata show --all-functions --counts)")
    inbound, outbound, everyone = (executed(p) for p in argv[1:])
    for path, ran in zip(argv[1:3], (inbound, outbound)):
        if not ran:
            sys.exit(f"error: {path}: no function with a count above zero (not a `show --counts` output?)")
    hottest = lambda counts: lambda n: (-counts[n], n)
    both = {n: max(c, outbound[n]) for n, c in inbound.items() if n in outbound}
    groups = [
        sorted(both, key=hottest(both)),
        sorted((n for n in inbound if n not in both), key=hottest(inbound)),
        sorted((n for n in outbound if n not in both), key=hottest(outbound)),
        sorted((n for n in everyone if n not in inbound and n not in outbound), key=hottest(everyone)),
    ]
    sys.stdout.write("".join(n + "\n" for g in groups for n in g))
    print("order: {} functions both sidecars ran, {} only the inbound, {} only the outbound, "
          "then {} others".format(*(len(g) for g in groups)), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
