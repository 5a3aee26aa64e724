"""The `kubetune` command."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import yaml

from kubetune import __version__
from kubetune.api import InvalidSpec, parse_finetunejob
from kubetune.catalog import presets
from kubetune.controller.builders import Context, NotBuildable, build_children
from kubetune.controller.settings import Settings
from kubetune.crd import render_crd
from kubetune.manifests import ManifestError, iter_files, read_documents
from kubetune.validate import validate_document


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kubetune")
def cli() -> None:
    """Fine-tune language models on Kubernetes, or on this machine, from one FineTuneJob manifest."""


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Check FineTuneJob manifests offline: the CRD schema, its CEL rules and the cross-field
    rules. Folders are searched for YAML files. Exits 1 when any manifest is invalid."""
    failed = checked = 0
    for path in iter_files(list(paths)):
        try:
            documents = read_documents(path)
        except ManifestError as error:
            click.echo(f"INVALID {error}", err=True)
            failed += 1
            continue
        for document in documents:
            verdict = validate_document(document)
            if verdict.skipped:
                click.echo(f"skipped {document.label}: {verdict.skipped}")
                continue
            checked += 1
            if verdict.ok:
                click.echo(f"valid   {document.label}")
                continue
            failed += 1
            count = len(verdict.problems)
            click.echo(f"INVALID {document.label}: {count} problem{'s' if count != 1 else ''}", err=True)
            for problem in verdict.problems:
                click.echo(f"  - {problem}", err=True)
    click.echo(f"{checked} FineTuneJob manifest(s) checked, {failed} invalid")
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--attempt", default=1, show_default=True, help="Attempt number of the training Job.")
def render(path: Path, attempt: int) -> None:
    """Print the children the operator would create for each FineTuneJob in PATH: the spec
    ConfigMap, the headless Service, the preflight Job and the training Job."""
    try:
        documents = read_documents(path)
    except ManifestError as error:
        raise click.ClickException(str(error)) from None
    rendered = []
    for document in documents:
        verdict = validate_document(document)
        if verdict.skipped:
            continue
        if not verdict.ok:
            raise click.ClickException(InvalidSpec(verdict.problems, document.label).render())
        job = parse_finetunejob(document.body)
        if not job.metadata.name:
            raise click.ClickException(f"{document.label}: metadata.name is required to name the children")
        try:
            rendered += build_children(Context(job, Settings.from_env()), attempt)
        except NotBuildable as error:
            raise click.ClickException(f"{document.label}: {error}") from None
    click.echo(yaml.safe_dump_all(rendered, sort_keys=False, width=120), nl=False)


@cli.command()
def crd() -> None:
    """Print the FineTuneJob CustomResourceDefinition (generated from the API models)."""
    click.echo(render_crd(), nl=False)


@cli.command(name="presets")
def list_presets() -> None:
    """List the model presets a manifest can name in spec.model.preset."""
    rows = [("PRESET", "REPOSITORY", "PARAMETERS", "CONTEXT", "TARGET MODULES")]
    for name, preset in presets().items():
        rows.append(
            (
                name,
                preset.repo,
                f"{preset.parameters / 1e9:.1f}B",
                str(preset.context_length),
                ",".join(preset.target_modules),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


def main() -> None:
    cli()
