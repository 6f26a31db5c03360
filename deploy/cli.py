"""The commands around the registry: `thumbs evaluate` (against production), `thumbs promote`, `thumbs rollback`,
`thumbs registry list`, `thumbs registry set-production` (the repair of aliases.json), `thumbs export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from common.cliflags import CONFIG_HELP, config_flags
from common.configfile import load_config
from deploy.config import ExportConfig
from evaluation.config import EvalConfig
from evaluation.promotion import PromotionPolicy

REGISTRY_HELP = "Registry folder or fsspec URL (s3://bucket/registry, memory://...)."

registry_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Inspect the adapter registry.")
canary_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="The running canary release: settle it on users' thumbs, or stop it.")


REJECTED = 3  # `thumbs promote`'s exit code when the candidate failed its checks (1: free space, 2: the command)


def _fail(err: Exception) -> None:
    from common.faults import DiskFull

    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1 if isinstance(err, DiskFull) else 2)  # 1: free space and re-run; 2: change the command


def _errors() -> tuple:
    from deploy.registry import RegistryError
    from evaluation.evaluate import EvaluationError
    from common.faults import DiskFull

    return RegistryError, EvaluationError, ValueError, FileNotFoundError, DiskFull


@config_flags(EvalConfig)
def evaluate_command(
    adapter: Path = typer.Option(..., "--adapter", help="Adapter folder written by `thumbs train`."),
    snapshot: str = typer.Option(..., "--snapshot", help="Snapshot folder or URL whose eval split is scored."),
    registry: Optional[str] = typer.Option(None, "--registry", help=REGISTRY_HELP + " Production's adapter "
                                           "is scored too, for the promotion decision."),
    name: str = typer.Option("default", "--name", help="Model name inside the registry."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Base model folder or cached hub id "
                                             "(default: the one the adapter was trained on)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where eval.json and report.md go (default: --adapter)."),
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP.format(section="evaluate")),
    json_out: bool = typer.Option(False, "--json", help="Print eval.json on stdout."),
    overrides: dict = None,
) -> None:
    """Score an adapter (and production's) on held-out feedback: preference AUC, drift, task suites."""
    from deploy.promote import evaluate_candidate
    from deploy.registry import Registry
    from evaluation.suites import SuiteError

    try:
        config = load_config(EvalConfig, config_file, "eval config", section="evaluate", **overrides)
        result = evaluate_candidate(adapter, snapshot, Registry(registry, name) if registry else None,
                                    base_model=base_model, config=config, out=out, log=_say)
    except (*_errors(), SuiteError) as err:
        _fail(err)
    if json_out:
        typer.echo(json.dumps(result, indent=2))


@config_flags(PromotionPolicy)
def promote_command(
    adapter: Path = typer.Option(..., "--adapter", help="Evaluated adapter folder (`thumbs evaluate --registry`)."),
    registry: str = typer.Option(..., "--registry", help=REGISTRY_HELP),
    name: str = typer.Option("default", "--name", help="Model name inside the registry."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Promotion policy YAML (default "
                                          "evaluation/promotion.yaml), or a whole thumbs.yaml (its `promotion:` "
                                          "section); flags override it."),
    force: bool = typer.Option(False, "--force", help="Make it production even if checks fail (recorded as forced)."),
    json_out: bool = typer.Option(False, "--json", help="Print the decision record as JSON on stdout."),
    overrides: dict = None,
) -> None:
    """Decide on a candidate, register it (promoted or rejected) and, if it passed, make it production."""
    from deploy.promote import promote
    from deploy.registry import Registry

    try:
        rules = PromotionPolicy.load(policy, **overrides)
        record = promote(adapter, Registry(registry, name), rules, force=force, log=_say)
    except _errors() as err:
        _fail(err)
    if json_out:
        typer.echo(json.dumps(record, indent=2))
    if not (record["promote"] or record.get("forced")):
        raise typer.Exit(REJECTED)  # registered, not production: a script or scheduler can tell


def rollback_command(
    registry: str = typer.Option(..., "--registry", help=REGISTRY_HELP),
    name: str = typer.Option("default", "--name", help="Model name inside the registry."),
    notify: Optional[str] = typer.Option(None, "--notify", help="Then export the restored production (peft) to "
                                         "--out and swap it into this vLLM server."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --notify: the serving folder to export to."),
    alias: str = typer.Option("thumbs", "--notify-alias", help="With --notify: the model name clients request."),
) -> None:
    """Production <- previous production (and, with --notify, the vLLM server back onto it)."""
    from deploy.export import export
    from deploy.promote import rollback
    from deploy.registry import Registry

    if notify and out is None:
        _fail(ValueError("--notify needs --out: the serving folder the restored version is exported to"))
    try:
        rollback(Registry(registry, name), log=_say)
        if notify:
            export(Registry(registry, name), "production", "peft", out, for_vllm=True, log=_say)
    except _errors() as err:
        _fail(err)
    if notify:
        _notify(notify, out, alias)


@registry_app.command("list")
def list_command(
    registry: str = typer.Option(..., "--registry", help=REGISTRY_HELP),
    name: str = typer.Option("default", "--name", help="Model name inside the registry."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """Versions, dates, snapshot ids, key metrics, and which one is production."""
    from deploy.registry import Registry

    try:
        rows = Registry(registry, name).listing()
    except _errors() as err:
        _fail(err)
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"registry {registry} ({name}): no versions yet")
        return
    typer.echo(f"{'version':<8} {'registered':<26} {'snapshot':<17} {'AUC':>6} {'KL/token':>9} {'files':<8}  status")
    for r in rows:
        auc = f"{r['auc']:.3f}" if r["auc"] is not None else "—"
        kl = f"{r['kl_per_token']:.4f}" if r["kl_per_token"] is not None else "—"
        mark = "*" if r["status"] == "production" else " "
        typer.echo(f"{r['version']:<8} {r['registered_at'] or '':<26} {r['snapshot_id'] or '':<17} {auc:>6} {kl:>9} "
                   f"{r['integrity']:<8} {mark}{r['status']}")
    for r in rows:
        if r["canary"]:
            typer.echo(f"{r['version']}: canary: {r['canary']}")
    for r in rows:
        if r["problem"]:
            typer.echo(f"{r['version']}: {r['problem']}", err=True)


@canary_app.command("settle")
def canary_settle_command(
    registry: str = typer.Option(..., "--registry", help=REGISTRY_HELP),
    lake: str = typer.Option(..., "--lake", help="The lake whose events since the canary started are its votes."),
    name: str = typer.Option("default", "--name", help="Model name inside the registry."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Promotion policy YAML (its `canary:` settings; "
                                          "default: evaluation/promotion.yaml) or a thumbs.yaml."),
    alias: str = typer.Option("thumbs", "--notify-alias", help="The served name's prefix: the arms answer as "
                              "ALIAS-vNNNN in the events' model_version."),
    json_out: bool = typer.Option(False, "--json", help="Print the decision's record as JSON."),
) -> None:
    """Look at the running canary: promote it, roll it back, withdraw it, or keep collecting (exit 0 for each)."""
    from deploy.canary import settle
    from deploy.registry import Registry

    try:
        record = settle(Registry(registry, name), lake, PromotionPolicy.load(policy).canary, alias=alias, log=_say)
    except _errors() as err:
        _fail(err)
    if json_out:
        typer.echo(json.dumps(record, indent=2))


@canary_app.command("stop")
def canary_stop_command(
    registry: str = typer.Option(..., "--registry", help=REGISTRY_HELP),
    name: str = typer.Option("default", "--name", help="Model name inside the registry."),
    reason: str = typer.Option("stopped by a person", "--reason", help="Saved with the rollback."),
    notify: Optional[str] = typer.Option(None, "--notify", help="Then unload the canary from this vLLM server "
                                         "(production, exported in --out, keeps answering)."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --notify: production's serving folder."),
    alias: str = typer.Option("thumbs", "--notify-alias", help="With --notify: the model name clients request."),
) -> None:
    """Roll the running canary back now; production is untouched. With --notify, the server unloads it."""
    from deploy.canary import export_canary, stop
    from deploy.registry import Registry

    if notify and out is None:
        _fail(ValueError("--notify needs --out: production's serving folder (the canary's is beside it)"))
    try:
        stop(Registry(registry, name), reason=reason, log=_say)
        if notify:
            export_canary(Registry(registry, name), out, log=_say)  # no canary now: its export is removed
    except _errors() as err:
        _fail(err)
    if notify:
        _notify(notify, out, alias)


@registry_app.command("set-production")
def set_production_command(
    version: str = typer.Argument(..., help="The version to serve (v0003), or 'none' for a registry with no "
                                            "production yet."),
    registry: str = typer.Option(..., "--registry", help=REGISTRY_HELP),
    name: str = typer.Option("default", "--name", help="Model name inside the registry."),
) -> None:
    """Repair: make a version production after checking its files, rewriting a missing or torn aliases.json."""
    from deploy.promote import set_production
    from deploy.registry import Registry

    try:
        set_production(Registry(registry, name), version, log=_say)
    except _errors() as err:
        _fail(err)


@config_flags(ExportConfig)
def export_command(
    version: str = typer.Argument(..., help="'production', 'previous' or a version id (v0003)."),
    registry: str = typer.Option(..., "--registry", help=REGISTRY_HELP),
    name: str = typer.Option("default", "--name", help="Model name inside the registry."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Base folder or cached id (default: the one "
                                             "the adapter was trained on): merged merges into it; peft reads its "
                                             "architecture to check the adapter against vLLM."),
    config_file: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP.format(section="export")),
    overrides: dict = None,
) -> None:
    """Write a registered adapter for serving (vLLM, transformers); with --notify, swap it into a vLLM server."""
    from deploy.export import export
    from deploy.registry import Registry

    try:
        settings = load_config(ExportConfig, config_file, "export config", section="export", **overrides)
        if settings.out is None or settings.format == "none":
            raise ValueError("export needs --out (the serving folder) and --format peft or merged")
        export(Registry(registry, name), version, settings.format, Path(settings.out), dtype=settings.dtype,
               base_model=base_model, max_lora_rank=settings.max_lora_rank, for_vllm=settings.notify is not None,
               log=_say)
    except _errors() as err:
        _fail(err)
    if settings.notify:
        canary = None
        if version == "production" and settings.format == "peft":  # the running canary is served beside it
            from deploy.canary import export_canary

            try:
                canary = export_canary(Registry(registry, name), Path(settings.out), base_model=base_model,
                                       max_lora_rank=settings.max_lora_rank, log=_say)
            except _errors() as err:
                _fail(err)
        _notify(settings.notify, Path(settings.out), settings.notify_alias, canary)


def _notify(url: str, out: Path, alias: str, canary: Optional[Path] = None) -> None:
    from deploy.serving import ServingError, publish

    try:
        publish(url, out, alias=alias, canary_dir=canary, log=_say)
    except ServingError as err:
        _fail(ServingError(f"{err} (the export in {out} is written; re-run with --notify to retry)"))


def _say(line: str) -> None:
    typer.echo(line, err=True)
