"""One scaffold for the three command-line tools: ``edgecam-device``, ``-train``, ``-convert``.

It owns what every command shares, so each CLI module only builds its parser and runs its
commands:

- ``-v/--verbose`` (debug) and ``-q/--quiet`` (warnings and errors only), accepted before and
  after a subcommand; log lines go to stderr (without a time stamp under systemd's journal,
  which adds its own);
- the exit status, defined once here (:data:`EXIT_OK` ... :data:`EXIT_BROKEN_PIPE`);
- how a failure reads: an :class:`~device.errors.EdgecamError` prints ``error: <message>`` and
  ``  fix: <hint>`` and never a traceback; Ctrl-C prints ``interrupted``; a closed stdout pipe
  (``... | head``) ends quietly; any other exception is an internal error: one line naming it,
  its traceback only with ``-v`` (it is always logged at debug level).

Usage::

    app = CliApp(build_parser, COMMANDS)

    def main(argv=None) -> int:
        return app.main(argv)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from device.errors import EdgecamError

log = logging.getLogger(__name__)

EXIT_OK = 0
"""Everything worked."""
EXIT_FAILURE = 1
"""The command ran but did not succeed or only partly (a failed gate, problems found, an
image of several that could not be read, an internal error)."""
EXIT_ERROR = 2
"""The command could not run: a usage, config, input or environment error (argparse uses 2
for usage errors too). The message says what and how to fix it."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C (SIGINT), 128 + 2 as a shell reports it."""
EXIT_BROKEN_PIPE = 141
"""The reader of stdout went away (``... | head``), 128 + SIGPIPE as a shell reports it."""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"  # journald time-stamps each line itself

REPORT_HINT = "run with -v for the traceback, and please report it"

Command = Callable[[argparse.Namespace], int]

VECTOR_OPTIONS = ("--mean", "--std")
"""Options that take one number or three (R, G, B)."""


def numbers(text: str) -> list[float]:
    """argparse type: ``127.5`` or ``127.5,127.5,127.5`` -> a list of 1 or 3 numbers."""
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number or a comma-separated list of numbers (e.g. 127.5,127.5,127.5)"
        ) from None
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"give 1 or 3 numbers (R,G,B), not {len(values)}")
    return values


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def join_vector_values(argv: Sequence[str], options: Sequence[str] = VECTOR_OPTIONS) -> list[str]:
    """``--mean 1 2 3`` -> ``--mean 1,2,3``: the three-value form, without letting the option
    swallow what follows (``--std 127.5 cat.bmp`` keeps cat.bmp a positional argument)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        out.append(token)
        i += 1
        if token in options and i < len(argv):
            values = [argv[i]]
            i += 1
            while len(values) < 3 and i < len(argv) and _is_number(argv[i]):
                values.append(argv[i])
                i += 1
            out.append(",".join(values))
    return out


class ArgumentParser(argparse.ArgumentParser):
    """argparse where :data:`VECTOR_OPTIONS` (``type=numbers``) take 1 or 3 numbers, spaced or
    comma-separated, and never a positional argument after them (subparsers inherit it)."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if args is None:
            args = sys.argv[1:]
        return super().parse_known_args(join_vector_values(list(args)), namespace)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted.

    ``main()`` may run several times in one process (tests capture stderr per call), so the
    handler must not keep the stream it saw first.
    """

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def stderr_is_journal() -> bool:
    """True when stderr is connected to systemd's journal (``JOURNAL_STREAM`` names it)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(level: int, fmt: str | None = None) -> None:
    """One stderr handler on the root logger (installed once per process) at ``level``."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        root.addHandler(handler)
    handler.setFormatter(
        logging.Formatter(fmt or (JOURNAL_FORMAT if stderr_is_journal() else LOG_FORMAT))
    )
    root.setLevel(level)


def add_verbosity_options(parser: argparse.ArgumentParser) -> None:
    """``-v`` / ``-q`` on ``parser`` and on each of its subcommands (where not defined yet).

    On subcommands the options default to "not given", so ``edgecam-device -v run`` and
    ``edgecam-device run -v`` both work.
    """
    _add_verbosity(parser, default=False)


def _add_verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
    options = parser._option_string_actions  # argparse has no public way to ask this
    if "-v" not in options and "--verbose" not in options:
        parser.add_argument(
            "-v", "--verbose", action="store_true", default=default, help="debug logging"
        )
    if "-q" not in options and "--quiet" not in options:
        parser.add_argument(
            "-q", "--quiet", action="store_true", default=default, help="warnings and errors only"
        )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_verbosity(sub, default=argparse.SUPPRESS)


def log_level(args: argparse.Namespace) -> int:
    """The level that ``-v`` / ``-q`` ask for (INFO when neither is given)."""
    if getattr(args, "verbose", False):
        return logging.DEBUG
    if getattr(args, "quiet", False):
        return logging.WARNING
    return logging.INFO


@dataclass
class CliApp:
    """A command-line tool: its parser, its commands, and the shared error handling.

    ``commands`` maps the subcommand (``args.command``) to its function; a tool without
    subcommands passes a single function. A command returns its exit status.
    ``error_prefix`` starts each error line (``"edgecam-train: "`` gives
    ``edgecam-train: error: ...``). ``quiet_loggers`` are third-party loggers held at WARNING.
    """

    build_parser: Callable[[], argparse.ArgumentParser]
    commands: Mapping[str, Command] | Command
    error_prefix: str = ""
    quiet_loggers: Sequence[str] = field(default_factory=tuple)

    def parse_args(self, argv: Sequence[str] | None) -> argparse.Namespace:
        parser = self.build_parser()
        add_verbosity_options(parser)
        return parser.parse_args(argv)

    def command_for(self, args: argparse.Namespace) -> Command:
        if callable(self.commands):
            return self.commands
        return self.commands[args.command]

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse ``argv``, set up logging, run the command; returns the exit status."""
        args = self.parse_args(argv)
        setup_logging(log_level(args))
        for name in self.quiet_loggers:
            logging.getLogger(name).setLevel(logging.WARNING)
        return self.run(self.command_for(args), args)

    def run(self, command: Command, args: argparse.Namespace) -> int:
        """Run ``command(args)`` and turn every way it can end into one exit status."""
        try:
            code = command(args)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return code
        except EdgecamError as exc:
            return self.report_error(exc)
        except KeyboardInterrupt:
            self.say("interrupted")
            return EXIT_INTERRUPTED
        except BrokenPipeError as exc:
            if _stdout_broken():
                return EXIT_BROKEN_PIPE
            return self.report_os_error(exc)
        except OSError as exc:  # disk full, permission denied, ...: the OS message says it all
            return self.report_os_error(exc)
        except Exception as exc:
            return self.report_internal(exc, verbose=bool(getattr(args, "verbose", False)))

    def say(self, line: str) -> None:
        """One line on stderr, after the tool's ``error_prefix``."""
        _write_stderr(f"{self.error_prefix}{line}")

    def report_error(self, exc: EdgecamError) -> int:
        """``error: <message>`` and ``  fix: <hint>``; the exception may choose its exit status."""
        code = int(getattr(exc, "exit_code", EXIT_ERROR))
        message = getattr(exc, "message", None) or str(exc)
        label = "" if code == EXIT_INTERRUPTED else "error: "
        self.say(f"{label}{message}")
        hint = getattr(exc, "hint", None)
        if hint:
            _write_stderr(f"  fix: {hint}")
        log.debug("error details", exc_info=exc)
        return code

    def report_os_error(self, exc: OSError) -> int:
        self.say(f"error: {exc}")
        log.debug("error details", exc_info=exc)
        return EXIT_ERROR

    def report_internal(self, exc: BaseException, verbose: bool) -> int:
        """One line naming an unexpected exception and where it came from; exit 1."""
        if verbose:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        else:
            log.debug("internal error", exc_info=exc)
        where = _origin(exc)
        first = str(exc).strip().splitlines()[:1]
        text = f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__
        line = f"error: internal error: {text}" + (f" (at {where})" if where else "")
        self.say(line if verbose else f"{line}; {REPORT_HINT}")
        return EXIT_FAILURE


def _write_stderr(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr is gone too: nothing left to tell
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _stdout_broken() -> bool:
    """True when stdout's reader is gone (a pipe closed by ``head``, say).

    stdout then points at /dev/null, so that the interpreter's own flush at exit does not
    raise again.
    """
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    broken = False
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        broken = True
    except (OSError, ValueError):
        pass
    if not broken:  # nothing left in the buffer: ask the pipe itself
        try:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            broken = any(events & select.POLLERR for _, events in poller.poll(0))
        except (OSError, AttributeError):  # no poll() on this platform
            pass
    if broken:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except OSError:
            pass
    return broken


def _origin(exc: BaseException) -> str:
    """``file.py:line in function`` of the innermost frame of ``exc``'s traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f"{os.path.basename(last.filename)}:{last.lineno} in {last.name}"
