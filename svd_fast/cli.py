"""What every svd_fast command does with bad input: one line on stderr, exit status 2, no traceback."""
from __future__ import annotations

import sys
from typing import Callable


def one_line_errors(main: Callable[[list[str] | None], int], argv=None) -> int:
    """main(argv), with ValueError / OSError / CheckpointError turned into 'error: ...' and status 2."""
    from svd_fast.checkpoints import CheckpointError

    try:
        return main(argv)
    except (ValueError, OSError, CheckpointError) as err:  # FileNotFoundError is an OSError
        print(f"error: {err}", file=sys.stderr)
        return 2
