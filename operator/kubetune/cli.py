"""The `kubetune` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml

from kubetune import __version__
from kubetune.api import FineTuneJob, FineTuneJobSpec, InvalidSpec, parse_finetunejob
from kubetune.api.facts import ModelFacts, needs_model_facts
from kubetune.catalog import presets
from kubetune.contract import Env, Figures, Network, RunSummary, SummaryOutput, parse_networks
from kubetune.controller.builders import Context, NotBuildable, build_children
from kubetune.controller.reconcile import effective_job
from kubetune.controller.settings import Settings, SettingsError
from kubetune.crd import render_crd
from kubetune.manifests import ManifestError, iter_files, read_documents
from kubetune.validate import config_map_problems, validate_document


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kubetune")
def cli() -> None:
    """Fine-tune language models on Kubernetes, or on this machine, from one FineTuneJob manifest."""


def _networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    try:
        return parse_networks(",".join(values))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--allow-network") from None


# What the operator's setting of the same name is in a cluster: validate and run judge
# dataset URLs against it, and run's trainer fetches within it.
_allow_network_option = click.option(
    "--allow-network",
    "allowed_networks",
    multiple=True,
    metavar="CIDR",
    envvar=Env.DATASET_ALLOWED_NETWORKS.value,
    show_envvar=True,
    callback=lambda context, parameter, values: _networks(values),
    help="A private network dataset URLs may reach, e.g. 192.168.1.0/24 for a local mirror (repeatable; "
    "the variable takes a comma-separated list). Cloud metadata addresses stay refused.",
)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_allow_network_option
def validate(paths: tuple[Path, ...], allowed_networks: tuple[Network, ...]) -> None:
    """Check FineTuneJob manifests offline: the CRD schema, its CEL rules, the cross-field
    rules, and dataset URLs the trainer would refuse to fetch. Folders are searched for YAML
    files. Exits 1 when any manifest is invalid."""
    failed = checked = 0
    for path in iter_files(list(paths)):
        try:
            documents = read_documents(path)
        except ManifestError as error:
            click.echo(f"INVALID {error}", err=True)
            failed += 1
            continue
        for document in documents:
            verdict = validate_document(document, allowed_networks)
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
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, path_type=Path),
    help="For accelerators: auto on a model that is not a preset: its config.json (or folder), as the "
    "preflight would read it.",
)
@click.option(
    "--volumes",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("volumes"),
    show_default=True,
    help="Folder holding one folder per PersistentVolumeClaim, where a model on a claim is read from.",
)
def render(path: Path, attempt: int, config_file: Path | None, volumes: Path) -> None:
    """Print the children the operator would create for each FineTuneJob in PATH: the spec
    ConfigMap, the headless Service, the preflight Job and the training Job."""
    jobs, _ = _valid_jobs(path)
    rendered = []
    for label, job in jobs:
        if not job.metadata.name:
            raise click.ClickException(f"{label}: metadata.name is required to name the children")
        # What the preflight would report, read here: the operator sizes from the same.
        reported = _model_facts(job.spec, config_file, volumes) if needs_model_facts(job.spec) else None
        try:
            settings = Settings.from_env()
            effective, _ = effective_job(job, settings, reported)
            rendered += build_children(Context(effective, settings), attempt)
        except (NotBuildable, SettingsError) as error:
            raise click.ClickException(f"{label}: {error}") from None
    click.echo(yaml.safe_dump_all(rendered, sort_keys=False, width=120), nl=False)


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--volumes",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("volumes"),
    show_default=True,
    help="Folder holding one folder per PersistentVolumeClaim the manifest names.",
)
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Write the result here instead.")
@click.option(
    "--secrets",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("secrets"),
    show_default=True,
    help="Folder holding one folder per Secret, one file per key.",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    help="Scratch folder (downloads, caches). Default: <volumes>/.work/<name>.",
)
@click.option("--nproc", default=1, show_default=True, help="Training processes (through torchrun when above 1).")
@click.option(
    "--model-cache",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=Env.MODEL_CACHE.value,
    help="Folder of downloaded models shared between runs. Default: a cache under --work.",
)
@_allow_network_option
def run(
    path: Path,
    volumes: Path,
    output: Path | None,
    secrets: Path,
    work: Path | None,
    nproc: int,
    model_cache: Path | None,
    allowed_networks: tuple[Network, ...],
) -> None:
    """Train the FineTuneJob in PATH on this machine. Ctrl-C stops after a checkpoint; the
    same command again resumes from it."""
    from kubetune_trainer.local import LocalPlan, ProgressLine, run_local

    job, config_maps = _one_job(path, allowed_networks)
    name = job.metadata.name or "local"
    plan = LocalPlan(
        job,
        volumes.resolve(),
        (work or volumes / ".work" / name).resolve(),
        secrets.resolve(),
        output.resolve() if output else None,
        nproc,
        config_maps,
        allowed_networks,
        model_cache.resolve() if model_cache else None,
    )
    click.echo(f"training {name}: {job.spec.method.type} on {job.spec.model.display}, {nproc} process(es)", err=True)
    progress = ProgressLine()
    code, summary = run_local(plan, progress)
    if progress.shown:
        click.echo("", err=True)  # ends the progress line
    _report(summary)
    if code:
        sys.exit(int(code))


def _valid_jobs(
    path: Path, allowed_networks: tuple[Network, ...] | None = None
) -> tuple[list[tuple[str, FineTuneJob]], dict[str, dict[str, str]]]:
    """Every FineTuneJob in a file, validated as the cluster would, and the data of the
    ConfigMaps written beside them. Stops with every problem of the first invalid one.
    Dataset URLs are judged only against known `allowed_networks` (run's); commands bound
    for a cluster leave them to its operator, whose setting may allow more."""
    try:
        documents = read_documents(path)
    except ManifestError as error:
        raise click.ClickException(str(error)) from None
    jobs, config_maps = [], {}
    for document in documents:
        body = document.body
        if isinstance(body, dict) and body.get("kind") == "ConfigMap":
            problems = config_map_problems(body)
            if problems:
                listed = "".join(f"\n  - {problem}" for problem in problems)
                raise click.ClickException(f"{document.label}: the ConfigMap cannot be mounted as a pod would:{listed}")
            config_maps[body["metadata"]["name"]] = dict(body.get("data") or {})
            continue
        verdict = validate_document(document, allowed_networks)
        if verdict.skipped:
            continue
        if not verdict.ok:
            raise click.ClickException(InvalidSpec(verdict.problems, document.label).render())
        jobs.append((document.label, parse_finetunejob(body)))
    return jobs, config_maps


def _one_job(
    path: Path, allowed_networks: tuple[Network, ...] | None = None
) -> tuple[FineTuneJob, dict[str, dict[str, str]]]:
    jobs, config_maps = _valid_jobs(path, allowed_networks)
    if len(jobs) != 1:
        raise click.ClickException(f"{path}: expected one FineTuneJob, found {len(jobs)}")
    return jobs[0][1], config_maps


def _done_line(summary: RunSummary) -> str:
    """What a finished run did, and the figures it has (a run whose checkpoint held every
    step trained nothing, and has no speed of its own)."""
    metrics = summary.metrics or Figures()
    parts = [f"final loss {metrics.train_loss:.4f}"] if metrics.train_loss is not None else []
    if metrics.tokens_per_second:
        parts.append(f"{metrics.tokens_per_second:,.0f} tokens/s")
    parts.append(f"{metrics.wall_seconds} s")
    return f"{summary.message}; {', '.join(parts)}"


def _report(summary: RunSummary) -> None:
    if summary.status != "Succeeded":
        reason = summary.reason
        hint = "; run the same command again to resume" if reason == "Interrupted" else ""
        click.echo(f"{reason}: {summary.message}{hint}", err=True)
        return
    click.echo(f"done: {_done_line(summary)}")
    for sample in summary.samples or []:
        click.echo(
            f"\n  Q: {sample.prompt}\n  expected: {sample.expected}\n"
            f"  before:   {sample.before or '(nothing)'}\n  after:    {sample.after or '(nothing)'}"
        )
    output = summary.output or SummaryOutput()
    click.echo(f"\noutput: {output.location} ({', '.join(output.formats or [])})")
    click.echo(f"report: {output.location}/report.html")


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--device-memory", help="Memory of one accelerator, e.g. 80Gi or 24Gi, to say whether the job fits.")
@click.option("--world-size", type=int, help="Devices in all (default: nodes x accelerators from the manifest).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, path_type=Path),
    help="The model's config.json (or the folder holding it), for models that are not presets.",
)
@click.option(
    "--volumes",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("volumes"),
    show_default=True,
    help="Folder holding one folder per PersistentVolumeClaim, where a model on a claim is read from.",
)
def estimate(
    path: Path, device_memory: str | None, world_size: int | None, config_file: Path | None, volumes: Path
) -> None:
    """Accelerator memory per device that the FineTuneJob in PATH needs, part by part."""
    from kubetune.estimate import GIB
    from kubetune.estimate import estimate as compute

    job, _ = _one_job(path)
    spec = job.spec
    model = _model_facts(spec, config_file, volumes)
    devices = world_size or spec.resources.world_size
    if devices is None:
        raise click.ClickException("resources.accelerators is auto: pass --world-size to estimate for a size")
    result = compute(spec, model, devices)
    click.echo(f"{spec.method.type} on {job.spec.model.display}, {devices} device(s)")
    click.echo(
        f"trainable parameters: {result.trainable_parameters:,} of {result.total_parameters:,} "
        f"({100 * result.trainable_parameters / result.total_parameters:.2f}%)"
    )
    for part, nbytes in result.parts.items():
        click.echo(f"  {part:<12} {nbytes / GIB:8.2f} GiB")
    click.echo(f"  {'total':<12} {result.total / GIB:8.2f} GiB per device")
    if device_memory:
        capacity = _quantity_bytes(device_memory)
        verdict = "fits" if result.fits(capacity) else "does NOT fit"
        click.echo(f"{verdict} in {device_memory} per device")
    click.echo("assumptions:")
    for assumption in result.assumptions:
        click.echo(f"  - {assumption}")


def _model_facts(spec: FineTuneJobSpec, config_file: Path | None, volumes: Path) -> ModelFacts:
    """The preset's facts, or those the preflight would read from the model's config.json,
    found here: --config, the claim's folder under --volumes, or this machine's Hub cache."""
    import json

    from kubetune.estimate import UnreadableConfig, read_model_facts

    if spec.model.preset:
        return ModelFacts.of_preset(presets()[spec.model.preset])
    found = config_file or _local_config(spec, volumes)
    if found is None:
        raise click.ClickException(
            f"the model {spec.model.display} is not a preset and its config.json is not on this machine: "
            "pass it with --config"
        )
    config = found / "config.json" if found.is_dir() else found
    try:
        return read_model_facts(json.loads(config.read_text()))
    except (OSError, ValueError) as error:  # UnreadableConfig is a ValueError too
        what = "" if isinstance(error, UnreadableConfig) else "cannot read it: "
        raise click.ClickException(f"{config}: {what}{error}") from None


def _local_config(spec: FineTuneJobSpec, volumes: Path) -> Path | None:
    model = spec.model
    if model.pvc is not None:
        folder = volumes / model.pvc.claim_name / model.pvc.path.lstrip("/")
        return folder / "config.json" if (folder / "config.json").is_file() else None
    if model.hugging_face is not None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # the operator's install has no Hub client
            return None
        cached = try_to_load_from_cache(model.hugging_face.repo, "config.json", revision=model.hugging_face.revision)
        return Path(cached) if isinstance(cached, str) else None
    return None


def _quantity_bytes(quantity: str) -> float:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity)


@cli.command(name="make-tiny-model")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--corpus",
    "corpus_files",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Text files whose lines train the tokenizer (a dataset or a manifest will do).",
)
@click.option(
    "--architecture",
    type=click.Choice(["phi3", "llama", "t5"]),
    default="phi3",
    show_default=True,
    help="phi3 or llama (decoders, for causal-lm and classification), t5 (encoder-decoder, for seq2seq).",
)
def make_tiny_model(folder: Path, corpus_files: tuple[Path, ...], architecture: str) -> None:
    """Make a tiny model of a real architecture with random weights, for offline demos and
    tests: a tokenizer trained on the corpus and a model saved with save_pretrained."""
    from kubetune_trainer.tiny import Architecture
    from kubetune_trainer.tiny import make_tiny_model as make

    lines = [line for file in corpus_files for line in file.read_text().splitlines() if line.strip()]
    chosen: Architecture = "t5" if architecture == "t5" else "llama" if architecture == "llama" else "phi3"
    make(folder, lines, architecture=chosen)
    click.echo(f"made a tiny {architecture} model in {folder}")


# ----------------------------------------------------------------------------- cluster commands


def _cluster_options(command: Any) -> Any:
    command = click.option("-n", "--namespace", help="Namespace (default: the kubeconfig context's).")(command)
    return click.option("--context", "kube_context", help="kubeconfig context (default: the current one).")(command)


def _remote(namespace: str | None, kube_context: str | None) -> Any:
    from kubetune.remote import Remote, connect

    try:
        client, default_namespace = connect(kube_context)
    except Exception as error:  # kubeconfig errors come in many types; the message says what
        raise click.ClickException(f"cannot reach a cluster: {error}") from None
    return Remote(client, namespace or default_namespace)


def _api_errors(action: Any) -> Any:
    """Cluster commands end with the API server's own message, never a traceback."""
    import functools

    @functools.wraps(action)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        from kubetune.remote import NotFound, UnreadableStatus

        try:
            return action(*args, **kwargs)
        except (NotFound, UnreadableStatus) as error:
            raise click.ClickException(str(error)) from None
        except ApiException as error:
            raise click.ClickException(_api_message(error)) from None

    return guarded


def _api_message(error: Any) -> str:
    import json

    try:
        return str(json.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"the API server answered {error.status} {error.reason}"


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_cluster_options
@_api_errors
def submit(path: Path, namespace: str | None, kube_context: str | None) -> None:
    """Create or update the FineTuneJobs in PATH (and ConfigMaps written beside them)."""
    jobs, _ = _valid_jobs(path)
    documents = read_documents(path)
    remote = _remote(namespace, kube_context)
    for document in documents:
        body = document.body
        if not isinstance(body, dict) or body.get("kind") not in ("ConfigMap", "FineTuneJob"):
            kind = body.get("kind") if isinstance(body, dict) else type(body).__name__
            raise click.ClickException(
                f"{document.label}: kubetune submit sends FineTuneJobs and their ConfigMaps; "
                f"apply a {kind} with kubectl"
            )
    for document in documents:
        body = document.body
        what = remote.submit(body)
        click.echo(f"{body['kind'].lower()}/{body['metadata']['name']} {what}")
    if not jobs:
        raise click.ClickException(f"{path}: no FineTuneJob in it")


@cli.command(name="list")
@click.option("-A", "--all-namespaces", is_flag=True, help="FineTuneJobs of every namespace, as kubectl's -A.")
@_cluster_options
@_api_errors
def list_jobs(all_namespaces: bool, namespace: str | None, kube_context: str | None) -> None:
    """FineTuneJobs with phase, method, progress, loss and age."""
    from kubetune.remote import job_table

    if all_namespaces and namespace:
        raise click.UsageError("-A/--all-namespaces lists every namespace; leave out -n/--namespace")
    jobs = _remote(namespace, kube_context).jobs(all_namespaces)
    click.echo(job_table(jobs, namespaces=all_namespaces))


@cli.command()
@click.argument("name")
@_cluster_options
@_api_errors
def status(name: str, namespace: str | None, kube_context: str | None) -> None:
    """Conditions, progress, output and the last events of a FineTuneJob."""
    from kubetune.remote import job_report

    remote = _remote(namespace, kube_context)
    click.echo(job_report(remote.job(name), remote.events(name)))


@cli.command()
@click.argument("name")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between reads.")
@_cluster_options
@_api_errors
def watch(name: str, interval: float, namespace: str | None, kube_context: str | None) -> None:
    """Follow a FineTuneJob's progress until it ends: exit 0 when it succeeds, 1 when it fails."""
    import time

    from kubetune.api import Phase
    from kubetune.remote import failure_message, finished, job_status, progress_line

    remote = _remote(namespace, kube_context)
    shown = ""
    while True:
        status = job_status(remote.job(name))
        line = f"{status.phase.value}  " + progress_line(status.progress)
        if line != shown:
            click.echo(line)
            shown = line
        ended = finished(status)
        if ended is Phase.SUCCEEDED:
            location = status.output.location if status.output else None
            click.echo(f"succeeded; output at {location}" if location else "succeeded")
            return
        if ended is Phase.FAILED:
            click.echo(f"failed: {failure_message(status)}", err=True)
            sys.exit(1)
        time.sleep(interval)


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the trainer writes.")
@click.option("--rank", default=0, show_default=True, help="Node rank (pod index) of the attempt.")
@click.option("--attempt", type=int, help="Attempt number (default: the newest); failed ones are kept for a while.")
@_cluster_options
@_api_errors
def logs(
    name: str, follow: bool, rank: int, attempt: int | None, namespace: str | None, kube_context: str | None
) -> None:
    """The trainer's log of one node of a FineTuneJob's newest attempt (or of --attempt N)."""
    remote = _remote(namespace, kube_context)
    for chunk in remote.logs(remote.rank_pod(name, rank, attempt), follow):
        click.echo(chunk, nl=False)


@cli.command()
@click.argument("name")
@_cluster_options
@_api_errors
def suspend(name: str, namespace: str | None, kube_context: str | None) -> None:
    """Stop a FineTuneJob's pods; its newest checkpoint is kept."""
    _remote(namespace, kube_context).set_suspend(name, True)
    click.echo(f"finetunejob/{name} suspended")


@cli.command()
@click.argument("name")
@_cluster_options
@_api_errors
def resume(name: str, namespace: str | None, kube_context: str | None) -> None:
    """Resume a suspended FineTuneJob from its newest checkpoint."""
    _remote(namespace, kube_context).set_suspend(name, False)
    click.echo(f"finetunejob/{name} resumed")


@cli.command()
@click.argument("name")
@_cluster_options
@_api_errors
def delete(name: str, namespace: str | None, kube_context: str | None) -> None:
    """Delete a FineTuneJob; its Jobs, pods, ConfigMap and Service go with it."""
    _remote(namespace, kube_context).delete(name)
    click.echo(f"finetunejob/{name} deleted")


@cli.command()
def operator() -> None:
    """Run the operator: watch FineTuneJobs and train them (settings from KUBETUNE_* variables)."""
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    from kubetune.controller.handlers import run as run_operator

    run_operator(settings)


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
