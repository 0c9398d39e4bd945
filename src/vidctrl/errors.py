"""The one exception type for mistakes a user can make and fix.

Every error a user can cause (a flag value, a file, a damaged checkpoint or cache) derives from
`UserError`; the CLI prints it as one `error: ...` line and exits non-zero without a traceback.
Anything else that escapes is a bug in vidctrl and keeps its traceback.
"""

from __future__ import annotations

import re
import sys

# torch's DataLoader re-raises a worker's exception as the same type whose message is
# "Caught X in DataLoader worker process N.\nOriginal Traceback (most recent call last): ...".
_WORKER_WRAPPED = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\s*\nOriginal Traceback")


class UserError(Exception):
    """A problem with the user's input; the message names the flag or file and the fix."""

    #: the process exit status the CLI returns for this error
    exit_code: int = 2


def format_user_error(exc: BaseException) -> str:
    """`error: <message>` on one logical line (the message itself may carry a hint after it)."""
    text = str(exc).strip() or type(exc).__name__
    if _WORKER_WRAPPED.search(text):
        # The user needs the worker's own message, not its traceback: it follows the last
        # "module.ErrorType: " line of the formatted traceback.
        for name in (f"{type(exc).__module__}.{type(exc).__qualname__}: ", f"{type(exc).__qualname__}: "):
            at = text.rfind(name)
            if at >= 0:
                text = text[at + len(name):].strip()
                break
    return text if text.startswith("error: ") else f"error: {text}"


def report_user_error(exc: BaseException) -> None:
    """Print `exc` as one `error:` line on stderr, on a line of its own: progress bars a failed run
    left open are ended first."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None:
        for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
            bar.close()
    print(format_user_error(exc), file=sys.stderr)
