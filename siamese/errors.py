"""The one error type a user can cause, and the wrapper that turns it into one line + exit 2."""
import sys


class UserError(Exception):
    """A problem the user can fix (bad path, corrupt file, bad flag). Message = problem + fix."""


def run(main, *args):
    """Run main(*args); a UserError becomes one line on stderr and exit status 2, never a traceback."""
    try:
        return main(*args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
