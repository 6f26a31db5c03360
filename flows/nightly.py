"""The nightly retrain as a Prefect flow: ingest → curate → train → evaluate → promote → export.

    thumbs run --params params.yaml          # once, in-process, on Prefect's embedded server
    thumbs deploy / make ui                  # the nightly (cron) and ad hoc deployments, see flows/deployments.py

Business logic lives in the stage packages (ingest/, training/, evaluation/, deploy/), which never
import Prefect; each task here is a thin call into one of them, with the retries, caching and
visibility Prefect adds. A failing stage fails the flow run with a `StageFailed` naming the stage;
production can only change inside `promote`, whose registry write is atomic.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from flows.lock import retrain_lock
from flows.stages import StageFailed, stage  # noqa: F401  (StageFailed: what a failed run raises)
from flows.params import RetrainParams


def _log() -> Callable[[str], None]:
    logger = get_run_logger()
    return lambda line: logger.info(line.strip())


# --- tasks: one per stage --------------------------------------------------------------------------------

@task(name="ingest", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10))
def ingest_feedback(params: RetrainParams) -> dict:
    from ingest.intake.job import IngestConfig, ingest
    from ingest.intake.sources import expand_sources

    sources = expand_sources(params.sources)
    summary = ingest(sources, params.path("lake"), IngestConfig(format=params.source_format, scrub_pii=params.scrub_pii,
                                                                insecure_dev_key=params.insecure_dev_key),
                     progress=False)
    _log()(summary.render())
    if summary.failed:
        raise RuntimeError(f"{len(summary.failed)} source(s) could not be read: "
                           + "; ".join(f"{s.source}: {s.error}" for s in summary.failed))
    return summary.to_dict()


def _window(params: RetrainParams, today: Optional[date] = None) -> tuple:
    if params.window_days is None:
        return None, None
    today = today or datetime.now(timezone.utc).date()
    return today - timedelta(days=params.window_days - 1), today


# No Prefect result cache: curate itself finds the published snapshot of the same content id, verifies it and reuses
# it, whereas a cached result is read back from Prefect's storage (pickle, or Prefect's JSON, which imports the
# exception class a file names): a file planted there must not be able to run code.
@task(name="curate", retries=1, retry_delay_seconds=exponential_backoff(backoff_factor=10))
def curate_window(params: RetrainParams) -> dict:
    from ingest.curate.pipeline import curate

    since, until = _window(params)
    stats = curate(params.path("lake"), params.path("snapshots"), since, until,
                   params.curate_config())
    _log()(f"snapshot {stats['snapshot_id']} ({'reused' if stats['reused'] else 'new'}): {stats['n_desirable']:,} up / "
           f"{stats['n_undesirable']:,} down in train; λD={stats['desirable_weight']:.4f} λU={stats['undesirable_weight']:.4f}")
    return stats


@task(name="train")
def train_adapter(params: RetrainParams, snapshot: dict, out: str) -> dict:
    if params.train_deployment:
        return _train_remotely(params, snapshot, out)
    from training.config import TrainConfig
    from training.trainer import train

    config = TrainConfig.load(params.train_config, **params.train_overrides())
    return train(snapshot["path"], params.base_model, Path(out), config, resume=_unfinished(out), log=_log())


def _unfinished(out: str) -> bool:
    from training import checkpoint

    return checkpoint.latest(Path(out)) is not None  # a retried train task continues from its checkpoint


def _train_remotely(params: RetrainParams, snapshot: dict, out: str) -> dict:
    from prefect.deployments import run_deployment

    run = run_deployment(name=params.train_deployment, timeout=params.train_timeout_s, as_subflow=True, parameters={
        "snapshot": snapshot["path"], "base_model": params.base_model, "out": out,
        "train_config": params.train_config, "overrides": params.train_overrides()})
    if not run.state or not run.state.is_completed():
        state = f"{run.state.name}: {run.state.message or ''}" if run.state else "without a state"
        raise RuntimeError(f"training deployment {params.train_deployment} ended {state} (after at most "
                           f"{params.train_timeout_s:.0f}s; is a worker serving its work pool?)")
    from training.run_folder import read_meta

    return read_meta(Path(out))["summary"]


@task(name="evaluate", retries=1)
def evaluate_adapter(params: RetrainParams, adapter: str, snapshot: dict) -> dict:
    from deploy.promote import evaluate_candidate
    from deploy.registry import Registry
    from evaluation.evaluate import EvalConfig

    config = EvalConfig(suites=params.suites, generation_prompts=params.generation_prompts,
                        max_new_tokens=params.max_new_tokens, device=params.device or "auto")
    # base_model from the parameters: the path in the adapter's metadata is where training ran (maybe a GPU box).
    return evaluate_candidate(Path(adapter), snapshot["path"], Registry(params.path("registry"), params.model_name),
                              base_model=params.base_model, config=config, log=_log())


@task(name="promote", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5))
def promote_adapter(params: RetrainParams, adapter: str) -> dict:
    from deploy.promote import promote
    from deploy.registry import Registry
    from evaluation.promotion import PromotionPolicy

    return promote(Path(adapter), Registry(params.path("registry"), params.model_name),
                   PromotionPolicy.load(params.promotion_policy), log=_log())


@task(name="export", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5))
def export_production(params: RetrainParams) -> Optional[dict]:
    """Export production unless the serving folder already holds it: a failed or skipped export heals next run."""
    from deploy.export import export, holds, serving_record
    from deploy.registry import Registry

    registry, out = Registry(params.path("registry"), params.model_name), Path(params.path("export_dir"))
    production = registry.aliases()["production"]
    if params.export_format == "none" or production is None:
        return None
    current = serving_record(out)
    exported = None
    if not holds(current, registry, production, params.export_format):  # else: exported already
        try:
            exported = export(registry, "production", params.export_format, out, base_model=params.base_model,
                              max_lora_rank=params.max_lora_rank, for_vllm=bool(params.notify),
                              protect=[params.path(p) for p in ("lake", "snapshots", "runs")], log=_log())
        except Exception as err:
            raise RuntimeError(f"{err}; production is {production} in the registry but {out} still holds "
                               f"{current.get('version') or 'nothing'}: the next run exports it again, or run "
                               f"`thumbs export production --registry {registry.url} --name {registry.name} "
                               f"--format {params.export_format} --out {out}`") from err
    if params.notify:  # every run, not only after an export: a server that missed the last one catches up
        return dict(exported or {}, served=_notify_server(params, out, production, registry))
    return exported


def _notify_server(params: RetrainParams, out: Path, production: str, registry) -> dict:
    from deploy.serving import ServingError, publish

    try:
        return publish(params.notify, out, alias=params.notify_alias, log=_log())
    except ServingError as err:
        raise RuntimeError(f"notify failed: {err}. Production is {production} in the registry and exported to "
                           f"{out}; the next run notifies again, or run `thumbs export production --registry "
                           f"{registry.url} --name {registry.name} --out {out} --notify {params.notify} "
                           f"--alias {params.notify_alias}`") from err


@task(name="publish")
def publish_evaluation(adapter: str, evaluation: dict) -> None:
    """The eval table and the report (plots inlined) as artifacts on the flow run, before anything is decided."""
    from flows.artifacts import eval_table, report_markdown

    create_table_artifact(eval_table(evaluation), key="thumbs-eval", description="Candidate vs production, held-out")
    create_markdown_artifact(report_markdown(Path(adapter)), key="thumbs-report", description="Evaluation report")


@task(name="publish-decision")
def publish_decision(record: dict) -> None:
    """The decision as an artifact. Visibility only: it is in the registry already, so a failure here is a warning."""
    from flows.artifacts import decision_markdown

    try:
        create_markdown_artifact(decision_markdown(record), key="thumbs-decision", description="Promotion decision")
    except Exception as err:  # noqa: BLE001
        get_run_logger().warning(f"could not publish the decision artifact ({err}); it is in the registry")


# --- the flow --------------------------------------------------------------------------------------------

@flow(name="thumbs-nightly-retrain", log_prints=True, persist_result=False)  # nothing read back from storage
def nightly_retrain(params: RetrainParams) -> dict:
    """Retrain the LoRA adapter from the feedback logs with KTO; promote it if it beats production."""
    with retrain_lock(params):
        out = run_folder(params)
        ingested = stage("ingest", ingest_feedback, params)
        snapshot = stage("curate", curate_window, params)
        trained = stage("train", train_adapter, params, snapshot, out)
        evaluation = stage("evaluate", evaluate_adapter, params, out, snapshot)
        stage("publish", publish_evaluation, out, evaluation)
        record = stage("promote", promote_adapter, params, out)
        publish_decision(record)
        exported = stage("export", export_production, params)
    return summarize(ingested, snapshot, trained, evaluation, record, exported, out)


@flow(name="thumbs-train", persist_result=False)
def train_flow(snapshot: str, base_model: str, out: str, train_config: Optional[str] = None,
               overrides: Optional[dict] = None) -> dict:
    """Training alone, for a deployment on its own (GPU) work pool; `train_deployment` points the nightly flow here."""
    from training.config import TrainConfig
    from training.trainer import train

    config = TrainConfig.load(train_config, **(overrides or {}))
    return train(snapshot, base_model, Path(out), config, resume=_unfinished(out), log=_log())


def run_folder(params: RetrainParams) -> str:
    """WORKDIR/runs/MODEL/<UTC time>-<flow run id>: unique per run, sorted by time."""
    from prefect.runtime import flow_run

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return str(Path(params.workdir) / "runs" / params.model_name / f"{stamp}-{str(flow_run.id or 'local')[:8]}")


def summarize(ingested, snapshot, trained, evaluation, record, exported, out) -> dict:
    candidate, incumbent = evaluation["candidate"], evaluation.get("incumbent")
    return {
        "run": out, "events": ingested["accepted"], "quarantined": ingested["quarantined_total"],
        "snapshot_id": snapshot["snapshot_id"], "n_desirable": snapshot["n_desirable"],
        "n_undesirable": snapshot["n_undesirable"], "desirable_weight": snapshot["desirable_weight"],
        "undesirable_weight": snapshot["undesirable_weight"], "train_loss": (trained.get("final") or {}).get("loss"),
        "auc": candidate["preference"]["auc"], "incumbent_auc": incumbent["preference"]["auc"] if incumbent else None,
        "version": record["version"], "promoted": bool(record.get("promote")), "reasons": record.get("reasons", []),
        "exported": (exported or {}).get("adapter_path") or (exported or {}).get("model_path"),
        "served": (exported or {}).get("served"),
    }

