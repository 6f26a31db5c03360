"""The `thumbs` command line: one sub-command per pipeline stage.

Each stage's flags and summary live beside its code (`ingest/cli.py`, ...); this module only
assembles them, so `thumbs --help` lists the whole pipeline.
"""

from __future__ import annotations

import typer

from deploy.cli import canary_app, evaluate_command, export_command, promote_command, registry_app, rollback_command
from flows.deployments import deploy_command, ui_command
from flows.run import config_app, run_command, unlock_command
from ingest.cli import curate_command, ingest_command
from training.cli import inspect_command, train_command

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="thumbs: nightly KTO retraining of LoRA adapters from thumbs-up/down feedback.")
app.command("ingest")(ingest_command)
app.command("curate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    curate_command)
app.command("train")(train_command)
app.command("inspect")(inspect_command)
app.command("evaluate")(evaluate_command)
app.command("promote")(promote_command)
app.command("rollback")(rollback_command)
app.add_typer(registry_app, name="registry")
app.add_typer(canary_app, name="canary")
app.command("export")(export_command)
app.command("run")(run_command)
app.add_typer(config_app, name="config")
app.command("deploy")(deploy_command)
app.command("ui")(ui_command)
app.command("unlock")(unlock_command)


@app.callback()
def main() -> None:
    """thumbs: nightly KTO retraining of LoRA adapters from thumbs-up/down feedback."""


if __name__ == "__main__":
    app()
