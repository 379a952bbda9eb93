"""The models and LoRAs this Studio knows, by name, and what is known of their weights without
reading them. The engine knows sources, not names; this is the one place that maps a name to
a source.

A model comes from, in this order:

1. the settings: the bundled demo model, then STUDIO_MODELS (`name=source,...`);
2. the models folder, STUDIO_MODELS_DIR: each `*.safetensors` checkpoint named by its file stem
   and each diffusers folder (one holding model_index.json) by its folder name; dot-files and
   the LoRA folder are skipped;
3. the admin (ModelSource, enabled).

On a name clash the earlier one wins: settings are the operator's, the folder is the operator's
disk, and nobody can shadow either from a web form (the admin form refuses such a name). In the
folder, a diffusers folder wins over a checkpoint of the same name. LoRAs are the
`*.safetensors` files in STUDIO_LORAS_DIR, named by file stem.

A folder is scanned with stat calls alone, never reading weights, and the scan is kept until
the folder's own mtime changes (a file added, removed or renamed in it) or `refresh()`
(POST /sdapi/v1/refresh-checkpoints and refresh-loras); a new process scans on first use.

Hashes: a checkpoint of gigabytes takes seconds to hash, so no web request hashes. The worker
and `manage.py models` call `weights_hash`, which hashes what the database (WeightsHash) lacks
and keeps it; everyone else reads `known_hash`, which stats the files and looks the hash up.
"""

import json
import logging
import os
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from huggingface_hub import snapshot_download

from . import engine
from .models import ModelSource, WeightsHash

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".safetensors"
LORA_NAME_UNSAFE = engine.LORA_NAME_UNSAFE

# --- Names --------------------------------------------------------------------------------


def from_settings() -> dict[str, str]:
    """{name: source} of the models the settings name: the demo model first, then
    STUDIO_MODELS (the demo model's name cannot be taken)."""
    return {settings.STUDIO_DEMO_MODEL_NAME: str(settings.STUDIO_DEMO_MODEL_PATH),
            **{name: source for name, source in settings.STUDIO_MODELS.items()
               if name != settings.STUDIO_DEMO_MODEL_NAME}}


def configured() -> dict[str, str]:
    """{name: source} of the operator's models: the settings', then the models folder's.
    Reads no database."""
    known = from_settings()
    for name, source in from_folder().items():
        known.setdefault(name, source)
    return known


def models() -> dict[str, str]:
    """{name: source} for every known model: the operator's, then those enabled in the
    admin, the earlier winning a clash (the module's docstring says why)."""
    known = configured()
    for name, source in ModelSource.objects.filter(enabled=True).values_list("name", "source"):
        known.setdefault(name, source)
    return known


def default_name() -> str:
    return getattr(settings, "STUDIO_DEFAULT_MODEL", None) or next(iter(models()))


def default_source() -> str:
    """The default model's source. The settings name the default model (studio/settings.py
    refuses one that is nowhere), so this reads no database: a worker process asks before it
    may use it (generation.runner.preload)."""
    name = default_name()
    source = configured().get(name)
    if source is None:
        raise engine.ModelLoadError(
            f"the default model {name!r} (STUDIO_DEFAULT_MODEL) is neither in the settings "
            f"nor in {settings.STUDIO_MODELS_DIR}"
        )
    return source


def get(name: str) -> engine.ModelRef | None:
    """The model called ``name``, with the hash of its weights if a worker or `manage.py
    models` has hashed them (else an empty hash, which the worker fills in); None if no model
    has that name. Never hashes: web requests call this.

    Raises ModelLoadError when the model is known but its configs cannot be read.
    """
    source = models().get(name)
    if source is None:
        return None
    engine.load_spec(source)  # configs and tokenizer, cached per source
    return engine.ModelRef(name=name, source=source, hash=known_hash(source) or "")


def loras() -> dict[str, str]:
    """{name: path} of the LoRA files in STUDIO_LORAS_DIR, by file stem."""
    return _scanned("loras", settings.STUDIO_LORAS_DIR, _scan_loras)


def from_folder() -> dict[str, str]:
    """{name: source} of the models in STUDIO_MODELS_DIR, in name order."""
    return _scanned("models", settings.STUDIO_MODELS_DIR, _scan_models)


def refresh() -> None:
    """Forget the folder scans; the next call scans the folders again."""
    _scans.clear()


# --- Scanning the folders -----------------------------------------------------------------

# kind -> (folder, its mtime when scanned, what the scan found)
_scans: dict[str, tuple[Path, int, dict[str, str]]] = {}


def _scanned(kind: str, root: Path, scan: Callable[[Path], dict[str, str]]) -> dict[str, str]:
    root = Path(root)
    try:
        mtime = root.stat().st_mtime_ns
    except OSError:  # no such folder: nothing dropped in yet
        return {}
    kept = _scans.get(kind)
    if kept is None or kept[:2] != (root, mtime):
        try:
            found = scan(root)
        except OSError as exc:
            log.warning("cannot scan %s: %s", root, exc)
            found = {}
        kept = _scans[kind] = (root, mtime, found)
    return kept[2]


def _scan_models(root: Path) -> dict[str, str]:
    skip = _resolved(settings.STUDIO_LORAS_DIR)
    configured_names = from_settings()
    found: dict[str, str] = {}
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if _resolved(path) == skip or not (path / "model_index.json").is_file():
                continue
            name = entry.name
        elif entry.name.endswith(CHECKPOINT_SUFFIX) and entry.is_file():
            name = entry.name.removesuffix(CHECKPOINT_SUFFIX)
        else:
            continue
        if (problem := _name_problem(name)) or (problem := _clash(name, found, configured_names)):
            log.warning("models folder: skipping %s: %s", path, problem)
            continue
        found[name] = str(path)
    return found


def _scan_loras(root: Path) -> dict[str, str]:
    found = {}
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if entry.name.startswith(".") or not entry.name.endswith(CHECKPOINT_SUFFIX):
            continue
        name = entry.name.removesuffix(CHECKPOINT_SUFFIX)
        problem = _name_problem(name) or (
            f"its name holds one of {LORA_NAME_UNSAFE}, which would break the <lora:NAME:WEIGHT> "
            "tag in a prompt or A1111's list of LoRA hashes" if set(name) & set(LORA_NAME_UNSAFE)
            else None
        )
        if problem:
            log.warning("LoRA folder: skipping %s: %s", entry.path, problem)
        elif entry.is_file():
            found[name] = entry.path
    return found


def _name_problem(name: str) -> str | None:
    if not name or not name.isprintable():
        return "its name is empty or holds control characters"
    if len(name) > settings.MAX_MODEL_NAME:
        return f"its name is longer than {settings.MAX_MODEL_NAME} characters"
    if name.endswith("]"):
        # An A1111 title is "name [hash]": a name ending so could not be told from one.
        return "its name ends with ']'"
    return None


def _clash(name: str, found: dict[str, str], configured_names: dict[str, str]) -> str | None:
    if name in configured_names:
        return f"the settings name a model {name!r} already"
    if name in found:
        return f"{found[name]} has the name {name!r} already"
    return None


def _resolved(path: Path | str) -> Path | None:
    try:
        return Path(path).resolve()
    except OSError:
        return None


# --- Hashes -------------------------------------------------------------------------------

Fingerprint = tuple[str, int, int]  # (resolved path, size, mtime_ns), as WeightsHash keeps it


def known_hashes(sources: Iterable[str]) -> dict[str, str | None]:
    """{source: the sha256 of its weights, None while not hashed yet}: stat calls and one
    query. A file changed since it was hashed (another size or mtime) counts as not hashed."""
    prints = {source: _fingerprint(source) for source in set(sources)}
    paths = [fingerprint[0] for fingerprint in prints.values() if fingerprint]
    rows = WeightsHash.objects.filter(path__in=paths).values_list(
        "path", "size", "mtime_ns", "sha256"
    )
    hashes = {(path, size, mtime): digest for path, size, mtime, digest in rows}
    return {source: hashes.get(fingerprint) for source, fingerprint in prints.items()}


def known_hash(source: str) -> str | None:
    return known_hashes([source])[source]


def weights_hash(source: str) -> str:
    """``engine.weights_hash(source)``, kept in the database: hashed only when no row matches
    the files as they are now. For the worker and `manage.py models`, never a web request.

    Raises ModelLoadError when the weights cannot be read.
    """
    before = _fingerprint(source)
    if before is not None and (digest := _lookup(before)):
        return digest
    digest = engine.weights_hash(source)
    after = _fingerprint(source)
    # Kept only if the files did not change while they were read.
    if after is not None and before in (None, after):
        path, size, mtime_ns = after
        WeightsHash.objects.bulk_create(
            [WeightsHash(path=path, size=size, mtime_ns=mtime_ns, sha256=digest,
                         hashed_at=timezone.now())],
            update_conflicts=True, unique_fields=["path"],
            update_fields=["size", "mtime_ns", "sha256", "hashed_at"],
        )
    return digest


def _lookup(fingerprint: Fingerprint) -> str | None:
    path, size, mtime_ns = fingerprint
    return WeightsHash.objects.filter(path=path, size=size, mtime_ns=mtime_ns).values_list(
        "sha256", flat=True
    ).first()


def _fingerprint(source: str) -> Fingerprint | None:
    """The weights' fingerprint by stat alone: a single file's size and mtime, or for a
    diffusers folder the total size and the newest mtime of model_index.json and the
    component weight files. None when there is nothing here to stat (a missing path, a hub
    model not downloaded yet)."""
    path = _local_path(source)
    if path is None:
        return None
    try:
        if path.is_file():
            stat = path.stat()
            return str(path), stat.st_size, stat.st_mtime_ns
        stats = [file.stat() for file in (path / "model_index.json",
                                          *path.glob(f"*/*{CHECKPOINT_SUFFIX}"))]
    except OSError:
        return None
    return str(path), sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)


def _local_path(source: str) -> Path | None:
    path = Path(source)
    if path.exists():
        return _resolved(path)
    if path.is_absolute() or source.startswith("."):
        return None
    try:  # a hub id: its snapshot in the local cache, without asking the hub
        return _resolved(snapshot_download(source, local_files_only=True))
    except (OSError, ValueError):
        return None


# --- LoRA metadata ------------------------------------------------------------------------


def lora_metadata(path: str) -> dict:
    """A LoRA file's safetensors `__metadata__`, with JSON-object values parsed, as A1111
    lists it: read from the header alone, kept while the file is unchanged. {} for a file
    whose header cannot be read (logged)."""
    try:
        stat = os.stat(path)
        return _metadata(path, stat.st_size, stat.st_mtime_ns)
    except (OSError, ValueError, engine.ModelLoadError) as exc:
        log.warning("cannot read the metadata of %s: %s", path, exc)
        return {}


@lru_cache(maxsize=256)
def _metadata(path: str, size: int, mtime_ns: int) -> dict:
    metadata = engine.read_header(Path(path)).metadata
    if not isinstance(metadata, dict):
        return {}
    return {key: _json_object_or_text(value) for key, value in metadata.items()}


def _json_object_or_text(value):
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


# --- Where this process generates ---------------------------------------------------------


def device() -> tuple:
    """(device, dtype) this process generates on, from STUDIO_DEVICE."""
    return engine.resolve_device(getattr(settings, "STUDIO_DEVICE", "auto"))


def model_memory(recipe: engine.Recipe | None = None) -> dict:
    """How this process keeps its models: ``engine.load_pipeline``'s ``budget_bytes`` and
    ``cpu_offload``, from STUDIO_WORKER_MODEL_MEMORY and STUDIO_CPU_OFFLOAD, and the
    ``fast_path`` it prepares them with: the recipe's own where it records one (a
    reproduction's, which loads the model again if this worker's differs), else this
    worker's (``fast_path``)."""
    default = fast_path()
    return {"budget_bytes": getattr(settings, "STUDIO_WORKER_MODEL_MEMORY", 0),
            "cpu_offload": getattr(settings, "STUDIO_CPU_OFFLOAD", "off") == "model",
            "fast_path": default if recipe is None else engine.run_fast_path(recipe, default)}


def vae_tiling() -> str:
    """When runs decode in tiles, STUDIO_VAE_TILING: off, on or auto (``engine.generate``)."""
    return getattr(settings, "STUDIO_VAE_TILING", "off")


def fast_path() -> engine.FastPath:
    """The fast path this worker loads its models with (STUDIO_COMPILE, STUDIO_CHANNELS_LAST,
    STUDIO_FUSED_QKV): on CUDA only. On the CPU none: unmeasured there, and a compile takes
    minutes on a few cores; a recipe that names one is still run with it where it can be."""
    if device()[0].type != "cuda":
        return engine.FastPath()
    return engine.FastPath(compile=getattr(settings, "STUDIO_COMPILE", "off"),
                           channels_last=getattr(settings, "STUDIO_CHANNELS_LAST", False),
                           fused_qkv=getattr(settings, "STUDIO_FUSED_QKV", False))


def threads() -> int | None:
    """torch's intra-op threads for a run: STUDIO_THREADS, else on the CPU every core but one.

    The spare core is for the web server, Postgres and Redis. Measured on the 2-core build
    machines, the demo model's 20 steps took 0.33 s on one thread and 0.87 s on torch's
    default of two, which fought those processes for the cores. None on CUDA: the GPU works.
    """
    if getattr(settings, "STUDIO_THREADS", 0):
        return settings.STUDIO_THREADS
    if device()[0].type != "cpu":
        return None
    return max(1, (os.cpu_count() or 1) - 1)
