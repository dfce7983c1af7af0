"""python -m tools.devstack up|down|status (run from the project folder; `make stack` does)."""

from __future__ import annotations

import argparse
import sys

from tools.devstack.stack import Stack, StackError, down, status, up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.devstack", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    try:
        stack = Stack.from_env()
        if args.command == "up":
            up(stack)
        elif args.command == "down":
            down(stack)
        else:
            return 0 if status(stack) else 1
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
