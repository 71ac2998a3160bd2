"""The `runwatch` command. `runwatch run exec` goes straight to its light front
(consumers.client.launch), which starts the command before anything heavy is imported: the
full command line (consumers.cli.main) loads the settings, pydantic and the rest, about 0.2 s that
would be added to every job's start. Everything else goes to consumers.cli.main."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] == ["run", "exec"]:
        from consumers.client.launch import main as exec_main

        return exec_main(args[2:])
    from consumers.cli.main import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
