"""One retrain at a time per model, across processes and machines: a Prefect global concurrency limit.

    with retrain_lock(config.run): ...        # the nightly flow's body; fails at stage 'lock' after lock_timeout_s
    release_lock("default")                   # `thumbs unlock default`: free a slot a killed run left taken

The limit `thumbs-retrain-<model>` is created on first use (Prefect skips, with a warning, limits that
do not exist). It lives on the Prefect server, so it guards every worker that talks to that server.
"""

from __future__ import annotations

import contextlib

from prefect.concurrency.sync import concurrency

from flows.config import RunSettings
from flows.stages import StageFailed


def ensure_concurrency_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit if missing: Prefect skips (with a warning) limits that do not exist."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:  # another run created it first
                pass


def lock_name(model_name: str) -> str:
    return f"thumbs-retrain-{model_name}"


@contextlib.contextmanager
def retrain_lock(run: RunSettings):
    """One retrain at a time per model, across processes and machines (a Prefect global concurrency limit)."""
    name = lock_name(run.model_name)
    held = contextlib.ExitStack()
    try:  # only the acquisition: errors of the stages below pass through untouched
        ensure_concurrency_limit(name)
        # A lease renewal lost to one API hiccup must not kill hours of training: it is logged, not raised.
        held.enter_context(concurrency(name, occupy=1, strict=True, timeout_seconds=run.lock_timeout_s,
                                       raise_on_lease_renewal_failure=False))
    except TimeoutError as err:
        raise StageFailed("lock", RuntimeError(
            f"another retrain of {run.model_name!r} held the lock for over {run.lock_timeout_s:.0f}s. If none is "
            f"running (a killed run can leave its slot taken), free it with `thumbs unlock {run.model_name}`")) from err
    except Exception as err:
        raise StageFailed("lock", err) from err
    with held:
        yield


def release_lock(model_name: str) -> int:
    """Free the slots of a retrain lock (left by a killed run); returns how many were taken."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            taken = client.read_global_concurrency_limit_by_name(lock_name(model_name)).active_slots
        except ObjectNotFound:
            return 0
        client.update_global_concurrency_limit(lock_name(model_name), GlobalConcurrencyLimitUpdate(active_slots=0))
    return taken
