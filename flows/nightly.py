"""The nightly retrain as a Prefect flow: ingest → canary → curate → train → evaluate → promote → export.

    thumbs run --config thumbs.yaml          # once, in-process, on Prefect's embedded server
    thumbs deploy --config thumbs.yaml       # the nightly (cron) and ad hoc deployments, see flows/deployments.py

The flow's parameters are thumbs.yaml's sections (flows/config.py): run, ingest, curate, train, evaluate,
promotion, export, each the stage's own config class, so the Prefect UI's run form has one section per stage.

Business logic lives in the stage packages (ingest/, training/, evaluation/, deploy/), which never
import Prefect; each task here is a thin call into one of them, with the retries, caching and
visibility Prefect adds. A failing stage fails the flow run with a `StageFailed` naming the stage;
production can only change inside `canary` (a running canary release settled on the night's votes) and
`promote`, whose registry writes are atomic.
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
from flows.config import CONFIG_SOURCE, RunSettings, ThumbsConfig, provenance_against, table
from deploy.config import ExportConfig
from evaluation.config import EvalConfig
from evaluation.promotion import PromotionPolicy
from ingest.curate.rules import CurateConfig
from ingest.intake.job import IngestConfig
from training.config import TrainConfig


def _log() -> Callable[[str], None]:
    logger = get_run_logger()
    return lambda line: logger.info(line.strip())


# --- tasks: one per stage --------------------------------------------------------------------------------

@task(name="ingest", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10))
def ingest_feedback(config: ThumbsConfig) -> dict:
    from ingest.intake.job import ingest
    from ingest.intake.sources import expand_sources

    summary = ingest(expand_sources(config.run.sources), config.path("lake"), config.ingest, progress=False)
    _log()(summary.render())
    if summary.failed:
        raise RuntimeError(f"{len(summary.failed)} source(s) could not be read: "
                           + "; ".join(f"{s.source}: {s.error}" for s in summary.failed))
    return summary.to_dict()


def _window(run: RunSettings, today: Optional[date] = None) -> tuple:
    if run.window_days is None:
        return None, None
    today = today or datetime.now(timezone.utc).date()
    return today - timedelta(days=run.window_days - 1), today


# No Prefect result cache: curate itself finds the published snapshot of the same content id, verifies it and reuses
# it, whereas a cached result is read back from Prefect's storage (pickle, or Prefect's JSON, which imports the
# exception class a file names): a file planted there must not be able to run code.
@task(name="curate", retries=1, retry_delay_seconds=exponential_backoff(backoff_factor=10))
def curate_window(config: ThumbsConfig) -> dict:
    from ingest.curate.pipeline import curate

    since, until = _window(config.run)
    stats = curate(config.path("lake"), config.path("snapshots"), since, until, config.curate)
    _log()(f"snapshot {stats['snapshot_id']} ({'reused' if stats['reused'] else 'new'}): {stats['n_desirable']:,} up / "
           f"{stats['n_undesirable']:,} down in train; λD={stats['desirable_weight']:.4f} λU={stats['undesirable_weight']:.4f}")
    return stats


@task(name="train")
def train_adapter(config: ThumbsConfig, snapshot: dict, out: str) -> dict:
    if config.run.train_deployment:
        return _train_remotely(config, snapshot, out)
    from training.trainer import train

    return train(snapshot["path"], config.run.base_model, Path(out), config.train, resume=_unfinished(out),
                 log=_log())


def _unfinished(out: str) -> bool:
    from training import checkpoint

    return checkpoint.latest(Path(out)) is not None  # a retried train task continues from its checkpoint


def _train_remotely(config: ThumbsConfig, snapshot: dict, out: str) -> dict:
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    settings = config.run
    try:
        run = run_deployment(name=settings.train_deployment, timeout=settings.train_timeout_s, as_subflow=True,
                             parameters={"snapshot": snapshot["path"], "base_model": settings.base_model, "out": out,
                                         "train": config.model_dump(mode="json")["train"]})
    except ObjectNotFound:
        raise RuntimeError(f"run.train_deployment {settings.train_deployment!r} is not a deployment on this Prefect "
                           "server: register it (`thumbs deploy` registers thumbs-train/train) or leave "
                           "train_deployment empty to train in the flow's process") from None
    if not run.state or not run.state.is_completed():
        state = f"{run.state.name}: {run.state.message or ''}" if run.state else "without a state"
        raise RuntimeError(f"training deployment {settings.train_deployment} ended {state} (after at most "
                           f"{settings.train_timeout_s:.0f}s; is a worker serving its work pool?)")
    from training.run_folder import read_meta

    return read_meta(Path(out))["summary"]


@task(name="evaluate", retries=1)
def evaluate_adapter(config: ThumbsConfig, adapter: str, snapshot: dict) -> dict:
    from deploy.promote import evaluate_candidate

    # base_model from the config: the path in the adapter's metadata is where training ran (maybe a GPU box).
    return evaluate_candidate(Path(adapter), snapshot["path"], _registry(config), base_model=config.run.base_model,
                              config=config.evaluate, log=_log())


def _registry(config: ThumbsConfig):
    from deploy.registry import Registry

    return Registry(config.path("registry"), config.run.model_name)


@task(name="canary", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5))
def settle_canary(config: ThumbsConfig) -> Optional[dict]:
    """The running canary's look on the lake's votes so far (None when none runs): promote, roll back, withdraw or
    continue. Before training, so a settled canary's production is what tonight's candidate is compared with."""
    from deploy.canary import settle

    return settle(_registry(config), config.path("lake"), config.promotion.canary, alias=config.export.notify_alias,
                  log=_log())


@task(name="promote", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5))
def promote_adapter(config: ThumbsConfig, adapter: str) -> dict:
    from deploy.promote import promote

    return promote(Path(adapter), _registry(config), config.promotion, log=_log())


@task(name="export", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5))
def export_production(config: ThumbsConfig) -> Optional[dict]:
    """Export production unless the serving folder already holds it: a failed or skipped export heals next run."""
    from deploy.export import export, holds, serving_record

    settings, registry, out = config.export, _registry(config), Path(config.path("serving"))
    production = registry.aliases()["production"]
    if settings.format == "none" or production is None:
        return None
    current = serving_record(out)
    exported = None
    if not holds(current, registry, production, settings.format):  # else: exported already
        try:
            exported = export(registry, "production", settings.format, out, dtype=settings.dtype,
                              base_model=config.run.base_model, max_lora_rank=settings.max_lora_rank,
                              for_vllm=bool(settings.notify),
                              protect=[config.path(p) for p in ("lake", "snapshots", "runs")], log=_log())
        except Exception as err:
            raise RuntimeError(f"{err}; production is {production} in the registry but {out} still holds "
                               f"{current.get('version') or 'nothing'}: the next run exports it again, or run "
                               f"`thumbs export production --registry {registry.url} --name {registry.name} "
                               f"--format {settings.format} --out {out}`") from err
    canary = None
    if settings.format == "peft":  # a running canary beside it (<out>.canary); an ended one's export removed
        from deploy.canary import export_canary

        canary = export_canary(registry, out, base_model=config.run.base_model, max_lora_rank=settings.max_lora_rank,
                               for_vllm=bool(settings.notify),
                               protect=[config.path(p) for p in ("lake", "snapshots", "runs")], log=_log())
    if settings.notify:  # every run, not only after an export: a server that missed the last one catches up
        return dict(exported or {}, served=_notify_server(settings, out, production, registry, canary))
    return exported


def _notify_server(settings: ExportConfig, out: Path, production: str, registry, canary: Optional[Path]) -> dict:
    from deploy.serving import ServingError, publish

    try:
        return publish(settings.notify, out, alias=settings.notify_alias, canary_dir=canary, log=_log())
    except ServingError as err:
        raise RuntimeError(f"notify failed: {err}. Production is {production} in the registry and exported to "
                           f"{out}; the next run notifies again, or run `thumbs export production --registry "
                           f"{registry.url} --name {registry.name} --out {out} --notify {settings.notify} "
                           f"--notify-alias {settings.notify_alias}`") from err


@task(name="publish")
def publish_evaluation(adapter: str, evaluation: dict) -> None:
    """The eval table and the report (plots inlined) as artifacts on the flow run, before anything is decided."""
    from flows.artifacts import eval_table, report_markdown

    create_table_artifact(eval_table(evaluation), key="thumbs-eval", description="Candidate vs production, held-out")
    create_markdown_artifact(report_markdown(Path(adapter)), key="thumbs-report", description="Evaluation report")


@task(name="publish-decision")
def publish_decision(record: dict, key: str = "thumbs-decision") -> None:
    """A decision (the offline promotion's, or a canary's look) as an artifact. Visibility only: it is in the
    registry already, so a failure here is a warning."""
    from flows.artifacts import canary_markdown, decision_markdown

    canary = key == "thumbs-canary"
    try:
        create_markdown_artifact(canary_markdown(record) if canary else decision_markdown(record), key=key,
                                 description="Canary release: the live decision" if canary else "Promotion decision")
    except Exception as err:  # noqa: BLE001
        get_run_logger().warning(f"could not publish the decision artifact ({err}); it is in the registry")


# --- the flow --------------------------------------------------------------------------------------------

@flow(name="thumbs-nightly-retrain", log_prints=True, persist_result=False)  # nothing read back from storage
def nightly_retrain(run: RunSettings, ingest: IngestConfig = IngestConfig(), curate: CurateConfig = CurateConfig(),
                    train: TrainConfig = TrainConfig(), evaluate: EvalConfig = EvalConfig(),
                    promotion: PromotionPolicy = PromotionPolicy(), export: ExportConfig = ExportConfig()) -> dict:
    """Retrain the LoRA adapter from the feedback logs with KTO; promote it if it beats production."""
    config = ThumbsConfig(run=run, ingest=ingest, curate=curate, train=train, evaluate=evaluate, promotion=promotion,
                          export=export)
    publish_config(config)
    with retrain_lock(config.run):
        out = run_folder(config.run)
        ingested = stage("ingest", ingest_feedback, config)
        canary = stage("canary", settle_canary, config)
        if canary is not None:
            publish_decision(canary, key="thumbs-canary")
        snapshot = stage("curate", curate_window, config)
        trained = stage("train", train_adapter, config, snapshot, out)
        evaluation = stage("evaluate", evaluate_adapter, config, out, snapshot)
        stage("publish", publish_evaluation, out, evaluation)
        record = stage("promote", promote_adapter, config, out)
        publish_decision(record)
        exported = stage("export", export_production, config)
    return dict(summarize(ingested, snapshot, trained, evaluation, record, exported, out), canary=canary)


def publish_config(config: ThumbsConfig) -> None:
    """The run's configuration, each value with where it came from, in the log and as an artifact: a value
    equal to the deployment's (thumbs.yaml at deploy time) is `file`, one changed in the UI's form `UI`."""
    source = CONFIG_SOURCE.get()
    if source is None:
        deployed = _deployment_parameters()
        source = provenance_against(config, deployed or {}, given="set" if deployed is None else "UI")
    text = table(config, source, only_set=True) or "(every value at its default)"
    get_run_logger().info("configuration (values not at their default; `thumbs config show` lists all):\n" + text)
    try:
        create_markdown_artifact("```\n" + table(config, source) + "\n```", key="thumbs-config",
                                 description="The run's configuration and where each value came from")
    except Exception as err:  # noqa: BLE001  (visibility only)
        get_run_logger().warning(f"could not publish the configuration artifact ({err})")


def _deployment_parameters() -> Optional[dict]:
    """The parameters of the deployment this run came from (thumbs.yaml's values at deploy time), or None.
    (prefect.runtime.deployment.parameters is the run's own, the form's values included.)"""
    from prefect import get_client
    from prefect.runtime import deployment

    if not deployment.id:
        return None
    with get_client(sync_client=True) as client:
        return client.read_deployment(deployment.id).parameters


@flow(name="thumbs-train", persist_result=False)
def train_flow(snapshot: str, base_model: str, out: str, train: TrainConfig = TrainConfig()) -> dict:
    """Training alone, for a deployment on its own (GPU) work pool; `run.train_deployment` points the nightly here."""
    from training.trainer import train as fit

    return fit(snapshot, base_model, Path(out), train, resume=_unfinished(out), log=_log())


def run_folder(run: RunSettings) -> str:
    """WORKDIR/runs/MODEL/<UTC time>-<flow run id>: unique per run, sorted by time."""
    from prefect.runtime import flow_run

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return str(Path(run.workdir) / "runs" / run.model_name / f"{stamp}-{str(flow_run.id or 'local')[:8]}")


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

