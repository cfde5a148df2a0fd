"""Errors that reach a person as one line and a distinct exit code.

Every failure a user can cause (a bad WAV, a wrong model, a missing data folder)
raises a subclass of :class:`HeartsoundError`. The CLI prints ``heartsound: <message>``
and exits with the class's code, so scripts can tell bad input from a broken tool
without parsing text. A traceback means a bug in heartsound, never bad input.
"""

from __future__ import annotations


class HeartsoundError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 1


class UsageError(HeartsoundError):
    """Arguments that cannot work together (argparse itself exits with 2)."""

    exit_code = 2


class AudioError(HeartsoundError):
    """An audio file or stream that cannot be read as a recording."""

    exit_code = 3


class ModelError(HeartsoundError):
    """A model file that is missing, not a model, or built for another front end."""

    exit_code = 4


class DataError(HeartsoundError):
    """A data folder or label file that cannot be used for training or evaluation."""

    exit_code = 5


class SpecError(HeartsoundError):
    """A FeatureSpec whose numbers cannot work (FFT shorter than the frame, ...)."""

    exit_code = 6


class DeviceError(HeartsoundError):
    """A device that is absent or failing: microphone, serial port, disk, remote host."""

    exit_code = 7


class DownloadError(HeartsoundError):
    """A download that failed or whose checksum did not match."""

    exit_code = 8


class Stopped(BaseException):
    """The job was told to stop (SIGTERM): raised in the main thread by the signal handler.

    A BaseException, like KeyboardInterrupt, so that the code that turns one recording's
    failure into an error row (``except Exception``) does not swallow it: the job ends,
    its clean-up runs, and the CLI prints this one line and exits with 128 + SIGTERM.
    """

    exit_code = 143
