"""Errors a user sees. Each one names what was wrong and what would have been accepted."""

from __future__ import annotations

from collections.abc import Iterable


class RecaptionError(Exception):
    """Base class for every error recaption raises on purpose.

    Subclasses keep their constructor arguments so they survive pickling (a Ray worker's error
    reaches the driver intact, message and type).
    """

    _init_args: tuple[object, ...] = ()

    def __reduce__(self) -> tuple[object, ...]:
        if self._init_args:
            return (self.__class__, self._init_args)
        return (self.__class__, self.args)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type where it has none), for a hint."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class ConfigError(RecaptionError, ValueError):
    """A wrong option: fails at once, naming the option, the value and the accepted values."""

    def __init__(
        self,
        option: str,
        value: object,
        accepted: Iterable[object] | str | None = None,
        hint: str = "",
    ) -> None:
        self._init_args = (
            option,
            value,
            accepted if not isinstance(accepted, Iterable) or isinstance(accepted, str) else tuple(accepted),
            hint,
        )
        self.option = option
        self.value = value
        if accepted is None:
            accepted_text = ""
        elif isinstance(accepted, str):
            accepted_text = f"; accepted: {accepted}"
        else:
            accepted_text = "; accepted: " + ", ".join(repr(a) for a in accepted)
        msg = f"invalid value for {option}: {value!r}{accepted_text}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class SourceError(RecaptionError, FileNotFoundError):
    """A source path that does not exist or holds nothing recognizable."""

    def __init__(self, path: str, problem: str, looked_for: Iterable[str] = ()) -> None:
        self.path = path
        looked = list(looked_for)
        self._init_args = (path, problem, tuple(looked))
        msg = f"{path}: {problem}"
        if looked:
            msg += ". Looked for: " + "; ".join(looked)
        super().__init__(msg)


class MissingColumnsError(RecaptionError, KeyError):
    """A table lacks columns a stage needs: names the missing and the available ones."""

    def __init__(self, where: str, missing: Iterable[str], available: Iterable[str]) -> None:
        self.missing = sorted(missing)
        self.available = sorted(available)
        self._init_args = (where, tuple(self.missing), tuple(self.available))
        super().__init__(
            f"{where}: missing column(s) {', '.join(map(repr, self.missing))}; "
            f"available: {', '.join(map(repr, self.available)) or '(none)'}"
        )

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class WorkerFault(RecaptionError, RuntimeError):
    """The worker itself is broken (an accelerator fault, every batch failing): not the data.

    The shard in hand is never committed; a runner retries it on a fresh worker instead of
    recording its samples as failures.
    """

    def __init__(self, message: str) -> None:
        self._init_args = (message,)
        super().__init__(message)


class ModelUnavailableError(RecaptionError, OSError):
    """A model given by hub id that is not in the local cache and cannot be fetched (no network,
    offline mode): the value may be right; where to get the model from is the problem."""

    def __init__(self, option: str, model: str, problem: str, hint: str = "") -> None:
        self._init_args = (option, model, problem, hint)
        self.option = option
        self.model = model
        msg = f"{option} {model!r}: the model could not be fetched: {problem}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)
