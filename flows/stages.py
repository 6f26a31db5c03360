"""A stage of the retrain and the error that names it: a failing stage fails the flow run with
`stage '<name>' failed: <error>`, so the run's message says where it broke."""

from __future__ import annotations

from typing import Any, Callable


class StageFailed(RuntimeError):
    """The named stage of the retrain failed. Production changes only in `promote`; after it, only `export`
    can fail the run (the registry then names the new production and the serving folder still holds the
    old one, until the next run or `thumbs export` writes it)."""

    def __init__(self, stage: str, error: BaseException):
        super().__init__(f"stage '{stage}' failed: {type(error).__name__}: {error}")
        self.stage = stage


def stage(name: str, step: Callable, *args: Any) -> Any:
    try:
        return step(*args)
    except Exception as err:  # re-raised with the stage's name: the flow run's message says where it broke
        raise StageFailed(name, err) from err
