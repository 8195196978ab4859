"""How every ``python -m swin_jax.*`` command reports a failure: one message, not a traceback.

    if __name__ == "__main__":
      cli.run(main, command="predict")                       # absl commands
      cli.run(main, command="main", workdir_flag="workdir", keep_workdir=has_checkpoint)

    with cli.report_errors("bench", debug=args.debug):      # any other entry point
      ...

A *user error* (see ``is_user_error``) prints ``error: <message>`` (long messages are cut to
their head and tail) and one line naming the log file that holds the full traceback, then
exits 1; a bad command line (unknown flag, bad flag value, unknown ``--config.*`` field)
exits 2. The log is ``<workdir>/error.log`` (appended) when the command has a workdir that
is kept, else a new ``swin_jax-<command>-*.log`` in the system temp dir.

User errors are the exceptions a person fixes by changing the input, not the code:
``ValueError`` (the project's convention for a bad argument or config value; it covers
``CheckpointMismatchError``, ``DatasetFormatError`` and ``validate_config``), ``OSError``
(missing files and directories, ``DatasetNotFoundError``, an existing ``--out``, no
permission, disk full), ``ImportError`` (an optional dependency not installed; the message
says which extra to install), ``FloatingPointError`` (``NonFiniteLossError``: the run
diverged; the message names the step), ``KeyError``/``AttributeError`` raised inside
ml_collections (a config field that does not exist), ``app.UsageError`` and anything raised
while the flags are parsed (the config file is part of the command line).

Anything else is a bug, and for a bug the traceback stays on stderr as well as in the log,
followed by the one-line message: a batch job's temp dir is often gone before anyone reads
it, and a bug report needs the traceback. A ``ValueError`` that is really a bug (numpy
shapes, say) is thus shown as a user error; its traceback is still in the log.

``--debug`` (every absl command; ``bench`` too) or ``SWIN_JAX_DEBUG=1`` lets every exception
propagate unchanged, so Python prints the traceback and no log is written. Ctrl-C exits with
130 and no message (a workdir the command created is still removed as below).

Workdirs: ``run``/``report_errors`` given a workdir remove it on failure if the command
created it and ``keep_workdir(path)`` says there is nothing worth keeping in it (the main
job: no complete checkpoint). A workdir that existed before is never removed.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import sys
import tempfile
import traceback
from typing import Any, Callable, Iterator, NoReturn

from absl import app, flags

DEBUG_ENV = "SWIN_JAX_DEBUG"
ERROR_LOG = "error.log"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# A message longer than this many lines keeps its head and tail (the whole is in the log).
MAX_MESSAGE_LINES = 20
_HEAD_LINES, _TAIL_LINES = 12, 5


class CommandLineError(Exception):
  """A bad command line (flags, config overrides): reported like a user error, exit 2."""


def debug_requested(argv: list[str] | None = None) -> bool:
  """``SWIN_JAX_DEBUG`` is set (not 0/false) or ``argv`` holds ``--debug``."""
  if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"):
    return True
  return any(arg in ("--debug", "--debug=true", "--debug=1", "--debug=True")
             for arg in argv or [])


def _raised_in(exc: BaseException, package: str) -> bool:
  """Whether the innermost frame of ``exc``'s traceback belongs to ``package``."""
  tb = exc.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  module = tb.tb_frame.f_globals.get("__name__", "")
  return module == package or module.startswith(package + ".")


def _config_key_error(exc: BaseException) -> bool:
  return isinstance(exc, (KeyError, AttributeError)) and _raised_in(exc, "ml_collections")


def is_user_error(exc: BaseException) -> bool:
  """Whether ``exc`` is the user's to fix (see the module docstring), not a bug."""
  return (isinstance(exc, (CommandLineError, app.UsageError, ValueError, OSError, ImportError,
                          FloatingPointError)) or _config_key_error(exc))


def describe(exc: BaseException) -> str:
  """The message of ``exc`` as a person should read it (without a traceback)."""
  # ml_collections wraps KeyError('msg') in AttributeError(KeyError(...)): unwrap to 'msg'.
  inner: Any = exc
  while isinstance(inner, BaseException) and len(inner.args) == 1 and isinstance(
      inner.args[0], BaseException):
    inner = inner.args[0]
  if isinstance(inner, BaseException) and len(inner.args) == 1 and isinstance(
      inner.args[0], str):
    text = inner.args[0]  # str(KeyError) would add quotes
  else:
    text = str(inner)
  if _config_key_error(exc):
    field, _, hint = text.partition("\n")
    text = f"no config field {field}" + (f" ({hint.strip()})" if hint.strip() else "")
  if not text.strip():
    text = type(exc).__name__
  return text


def _shorten(message: str, log: str | None) -> str:
  lines = message.splitlines() or [""]
  if len(lines) <= MAX_MESSAGE_LINES:
    return message
  left_out = len(lines) - _HEAD_LINES - _TAIL_LINES
  where = "the log" if log else "the full message"
  return "\n".join(lines[:_HEAD_LINES] + [f"  ... {left_out} more lines (see {where}) ..."] +
                   lines[-_TAIL_LINES:])


def _write_log(command: str, exc: BaseException, log_dir: str | None) -> str | None:
  """Writes the traceback; returns the log's path, or None if no file could be written."""
  header = (f"swin_jax {command} failed at "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}\n"
            f"command line: {' '.join(sys.argv)}\n\n")
  text = header + "".join(traceback.format_exception(exc)) + "\n"
  try:
    if log_dir is not None:
      path = os.path.join(log_dir, ERROR_LOG)
      with open(path, "a") as f:
        f.write(text)
      return path
    fd, path = tempfile.mkstemp(prefix=f"swin_jax-{command}-", suffix=".log")
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return path
  except OSError:
    return None


def _report(command: str, exc: BaseException, log_dir: str | None) -> int:
  """Prints the message (and, for a bug, the traceback); returns the exit code."""
  user = is_user_error(exc)
  log = _write_log(command, exc, log_dir)
  sys.stdout.flush()
  if not user or log is None:
    traceback.print_exception(exc, file=sys.stderr)
  message = _shorten(describe(exc), log)
  if user:
    print(f"error: {message}", file=sys.stderr)
  else:
    print(f"error: unexpected {type(exc).__name__}: {message}", file=sys.stderr)
  if isinstance(exc, (CommandLineError, app.UsageError)):
    print(f"(python -m swin_jax.{command} --helpshort lists the flags)", file=sys.stderr)
  if log and user:
    print(f"(traceback in {log}; --debug or {DEBUG_ENV}=1 prints it)", file=sys.stderr)
  elif log:
    print(f"(a bug? the traceback above is also in {log})", file=sys.stderr)
  sys.stderr.flush()
  return EXIT_USAGE if isinstance(exc, (CommandLineError, app.UsageError)) else EXIT_ERROR


def _has_entries(path: str) -> bool:
  return bool(os.listdir(path))


@contextlib.contextmanager
def report_errors(command: str, *, debug: bool | None = None, workdir: str | None = None,
                  keep_workdir: Callable[[str], bool] = _has_entries) -> Iterator[None]:
  """Turns an exception in the body into a message, a log and ``SystemExit``.

  ``command``: the name in messages and the log file (``predict`` for
  ``python -m swin_jax.predict``). ``debug``: re-raise instead (default: from the
  environment). ``workdir``: on failure, removed if it did not exist on entry and
  ``keep_workdir(workdir)`` is false (default: keep it unless empty); the log goes into it
  when it is kept.
  """
  if debug is None:
    debug = debug_requested()
  created = workdir is not None and not os.path.lexists(workdir)
  try:
    yield
  except BaseException as exc:  # pylint: disable=broad-except
    if isinstance(exc, SystemExit) and not exc.code:
      raise
    log_dir = None
    if workdir is not None and os.path.isdir(workdir):
      try:
        remove = created and not keep_workdir(workdir)
      except OSError:  # cannot look inside: keep it
        remove = False
      if remove:
        shutil.rmtree(workdir, ignore_errors=True)
      else:
        log_dir = workdir
    if isinstance(exc, SystemExit) or debug:
      raise
    if isinstance(exc, KeyboardInterrupt):
      raise SystemExit(EXIT_INTERRUPTED) from None
    raise SystemExit(_report(command, exc, log_dir)) from None


def _define_debug_flag() -> None:
  if "debug" not in flags.FLAGS:
    flags.DEFINE_bool("debug", False, f"Show the full traceback of an error (also: "
                      f"{DEBUG_ENV}=1) instead of one line and a log file.")


def _parse_flags(command: str) -> Callable[[list[str]], list[str]]:
  """absl's flags parser, with every failure reported as a command-line error."""

  def parse(argv: list[str]) -> list[str]:
    with report_errors(command, debug=debug_requested(argv)):
      try:
        return flags.FLAGS(argv)
      except flags.Error as e:
        raise CommandLineError(str(e)) from e
      except Exception as e:  # pylint: disable=broad-except
        # Raised by a flag's parser: ml_collections loading the config file or applying
        # a --config.* override. Name the override when the message names its field.
        message = describe(e)
        field = re.match(r"no config field '([^']+)'", message)
        culprit = [arg.split("=")[0] for arg in argv[1:] if field and arg.startswith("--")
                   and field.group(1) in arg.split("=")[0].split(".")[1:]]
        if culprit:
          message = f"{culprit[0]}: {message}"
        raise CommandLineError(message) from e

  return parse


def run(main: Callable[[list[str]], Any], *, command: str, workdir_flag: str | None = None,
        keep_workdir: Callable[[str], bool] = _has_entries) -> NoReturn:
  """``absl.app.run(main)`` with flags parsing and ``main`` under ``report_errors``.

  Defines ``--debug``. ``app.UsageError`` from ``main`` becomes a one-line command-line
  error (instead of absl's full usage text). ``workdir_flag``: the flag naming the
  command's workdir (see ``report_errors``).
  """
  _define_debug_flag()

  def reported_main(argv: list[str]) -> Any:
    debug = bool(flags.FLAGS.debug) or debug_requested()
    workdir = flags.FLAGS[workdir_flag].value if workdir_flag else None
    with report_errors(command, debug=debug, workdir=workdir, keep_workdir=keep_workdir):
      try:
        return main(argv)
      except app.UsageError as e:
        if debug:
          raise
        raise CommandLineError(str(e)) from e

  app.run(reported_main, flags_parser=_parse_flags(command))
  raise AssertionError("app.run returned")  # it always exits
