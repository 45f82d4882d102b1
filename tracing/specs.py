"""Model ids: the one parser (:func:`parse_spec`) and resolution to a local folder (:func:`resolve`).

A model id is ``demo:<name>``, a local folder or GGUF file, or a Hugging Face hub id
``org/name[@revision]`` (the revision a branch, tag, commit or ``refs/pr/N``).  A folder or hub
repository holding several GGUF files names one with a ``:<file>.gguf`` suffix
(``org/name:model-Q4_K_M.gguf``, ``org/name@rev:model-Q8_0.gguf``, ``./folder:model.gguf``). Hub models are downloaded once into the
Hugging Face cache, or, for a sampled test, only their config files (the weights are then read by
range requests, :mod:`tracing.sources.remote`); ``HF_TOKEN`` is read at download time and never stored.
"""
from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import TracingError

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
META_PATTERNS = ["*.json", "*.model", "tokenizer*", "*.tiktoken", "*.txt", "recipe.yaml"]


@dataclass
class Resolved:
    spec: str
    path: Path
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    hub_sha256: dict[str, str] = field(default_factory=dict)  # file -> LFS sha256 recorded by the hub
    file: str | None = None  # the GGUF file chosen with a ``:<file>.gguf`` suffix
    remote: bool = False  # weights read from the hub by range requests (``path`` holds the config only)
    hub_sizes: dict[str, int] = field(default_factory=dict)  # file -> size the hub reports


@dataclass(frozen=True)
class Spec:
    """A parsed model id. ``kind`` is ``"demo"`` (``name``), ``"local"`` (``path``, which may not
    exist) or ``"hub"`` (``repo_id`` and an optional ``revision``, which may contain ``/``)."""

    text: str
    kind: str
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None
    name: str | None = None
    file: str | None = None  # a ``:<file>.gguf`` suffix: the GGUF file inside the folder or repository


DEMO_PREFIX = "demo:"


def is_demo(spec) -> bool:
    """Does the model id name a model of the demo family (``demo:<name>``)?"""
    return str(spec).startswith(DEMO_PREFIX)


def demo_name(spec) -> str | None:
    """``a-docs`` for ``demo:a-docs``; None for an id that is not a demo model."""
    return str(spec)[len(DEMO_PREFIX):] if is_demo(spec) else None


def demo_id(name: str) -> str:
    """The model id of the demo model ``name`` (``demo:<name>``)."""
    return DEMO_PREFIX + name


HUB_REPO = re.compile(r"[\w.\-]+(/[\w.\-]+)?")
HUB_REVISION = re.compile(r"[\w.\-]+(/[\w.\-]+)*")


def path_too_long(e: OSError, what: str) -> TracingError | None:
    """A one-line error for a path the file system rejects as too long (None for other errors)."""
    if e.errno != errno.ENAMETOOLONG:
        return None
    return TracingError(f"{str(what)[:60]}...: a path component is too long for the file system; "
                        f"use shorter folder and file names")


def _is_dir(p: Path, what: str) -> bool:
    try:
        return p.is_dir()
    except OSError as e:
        raise (path_too_long(e, what) or e) from None


def _is_gguf_file(p: Path, what: str) -> bool:
    try:
        return p.suffix == ".gguf" and p.is_file()
    except OSError as e:
        raise (path_too_long(e, what) or e) from None


def parse_spec(spec: str | os.PathLike) -> Spec:
    """The one parser of model ids: ``demo:<name>``, an existing local folder or GGUF file, a hub id
    ``org/name[@revision]`` (the revision may be a branch, tag, commit or ``refs/pr/N``), or
    else a local path (``/``, ``.`` or ``~`` first, or more than one ``/`` before any ``@``); any
    of the last three may end in ``:<file>.gguf``."""
    text = str(spec)
    if is_demo(text):
        return Spec(text=text, kind="demo", name=demo_name(text))
    path = Path(text).expanduser()
    if _is_dir(path, text) or _is_gguf_file(path, text):
        return Spec(text=text, kind="local", path=path)
    where, sep, file = text.rpartition(":")
    if sep and where and file.endswith(".gguf") and "/" not in file:
        return replace(parse_spec(where), text=text, file=file)
    if isinstance(spec, os.PathLike) or text.startswith(("/", ".", "~")):
        return Spec(text=text, kind="local", path=path)
    repo, at, revision = text.partition("@")
    if HUB_REPO.fullmatch(repo) and (not at or HUB_REVISION.fullmatch(revision)):
        return Spec(text=text, kind="hub", repo_id=repo, revision=revision or None)
    return Spec(text=text, kind="local", path=path)


def resolve(spec: str, local_files_only: bool | None = None, remote: bool = False) -> Resolved:
    """Turn a model spec into a local folder, downloading from the hub when needed. With ``remote``
    a hub model whose safetensors weights are not all in the local cache is not downloaded: only its
    config and index files are, and its weights are read by range requests
    (:mod:`tracing.sources.remote`)."""
    s = parse_spec(spec)
    if s.kind == "demo":
        from . import demo
        return Resolved(spec=s.text, path=demo.resolve_demo(s.text))
    if s.kind == "local":
        if not (_is_dir(s.path, s.text) or (s.file is None and _is_gguf_file(s.path, s.text))):
            raise TracingError(f"model folder {s.text if s.file is None else s.path} does not exist; give an existing local folder (with "
                               f"config.json and weights) or .gguf file, a hub id like org/name[@revision], "
                               f"or demo:<name>")
        return Resolved(spec=s.text, path=s.path.resolve(), file=s.file)
    return _resolve_hub(s, local_files_only, remote)


def _resolve_hub(s: Spec, local_files_only: bool | None, remote: bool = False) -> Resolved:
    from huggingface_hub import HfApi, snapshot_download

    from .sources.hubhttp import endpoint
    from huggingface_hub.utils import HfHubHTTPError

    spec, repo_id, revision = s.text, s.repo_id, s.revision
    token = os.environ.get("HF_TOKEN") or None  # read at call time, never stored
    env_offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    offline = local_files_only or env_offline
    hub_sha: dict[str, str] = {}
    sizes: dict[str, int] = {}
    ranged = False
    patterns = META_PATTERNS + ["*.safetensors"]
    try:
        if not offline:
            info = HfApi(endpoint=endpoint()).model_info(repo_id, revision=revision, files_metadata=True,
                                                         token=token)
            files = [f.rfilename for f in info.siblings or []]
            if s.file is not None:
                patterns = META_PATTERNS + [s.file]
            elif not any(f.endswith(".safetensors") for f in files):
                ggufs = [f for f in files if f.endswith(".gguf")]
                if len(ggufs) > 1:
                    raise TracingError(f"{spec} holds several GGUF files ({', '.join(ggufs[:6])}"
                                       f"{', …' if len(ggufs) > 6 else ''}); pick one with {spec}:<file>.gguf")
                patterns = META_PATTERNS + (ggufs or ["pytorch_model*.bin"])
            for f in info.siblings or []:
                if getattr(f, "lfs", None) is not None and getattr(f.lfs, "sha256", None):
                    hub_sha[f.rfilename] = f.lfs.sha256
                if getattr(f, "size", None) is not None:
                    sizes[f.rfilename] = int(f.size)
            revision = info.sha or revision
            read = _files_read(repo_id, revision, token, files) if s.file is None else None
            if read is not None:  # a sharded model: only the shards holding tensors it reads
                patterns = META_PATTERNS + read
            ranged = remote and s.file is None and _read_by_ranges(repo_id, revision, files if read is None else read)
            gguf = next((p for p in patterns[len(META_PATTERNS):] if p.endswith(".gguf")), None)
            if remote and gguf is not None and _gguf_by_ranges(repo_id, revision, gguf):
                ranged, s = True, replace(s, file=gguf)  # its header and sampled rows by range requests
            with _quiet(ranged):  # the config files of a range-read model: small, no progress bar
                path = snapshot_download(repo_id, revision=revision, token=token, endpoint=endpoint(),
                                         allow_patterns=META_PATTERNS if ranged else patterns)
        else:
            path = snapshot_download(repo_id, revision=revision, local_files_only=True,
                                     allow_patterns=META_PATTERNS + list(WEIGHT_PATTERNS) + [s.file or "*.gguf"])
    except TracingError:
        raise
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = "set HF_TOKEN for gated or private models" if status in (401, 403) else "check the id and revision"
        raise TracingError(f"the hub refused {spec} (HTTP {status}); {hint}") from None
    except Exception as e:  # offline, DNS failure, not in cache, ...
        if offline:
            hint = ("it is not in the local Hugging Face cache and the hub is not used (HF_HUB_OFFLINE is on); "
                    "download it on a machine with network access, pass its local folder, or allow downloads "
                    "with HF_HUB_OFFLINE=0")
        else:
            hint = ("check the network and the id, or download it first and pass the local folder "
                    "(or set HF_HUB_OFFLINE=1 to use the local cache)")
        raise TracingError(f"cannot fetch {spec} from the Hugging Face hub ({type(e).__name__}); {hint}") from None
    path = Path(path)
    commit = path.name if re.fullmatch(r"[0-9a-f]{40}", path.name) else revision
    return Resolved(spec=spec, path=path, repo_id=repo_id, revision=revision, commit=commit, hub_sha256=hub_sha,
                    file=s.file, remote=ranged, hub_sizes=sizes)


@contextmanager
def _quiet(on: bool):
    """huggingface_hub's progress bars off (when ``on``) for the duration."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    was = are_progress_bars_disabled()
    if on:
        disable_progress_bars()
    try:
        yield
    finally:
        if on and not was:
            enable_progress_bars()


def _files_read(repo_id: str, commit: str | None, token, files: list[str]) -> list[str] | None:
    """The weight files of a sharded safetensors model on the hub that hold a tensor the model reads
    (:func:`tracing.arch.files_read`, from its config and index, fetched first), or None
    (every file) for a model without an index or whose config the architecture adapter refuses
    (opening it then says why)."""
    from huggingface_hub import hf_hub_download

    from .arch import arch_from_config, files_read
    from .sources.base import _read_weight_map, read_config_json
    from .sources.hubhttp import endpoint
    index = "model.safetensors.index.json"
    if index not in files or "config.json" not in files:
        return None
    with _quiet(True):
        got = {f: Path(hf_hub_download(repo_id, f, revision=commit, token=token, endpoint=endpoint()))
               for f in ("config.json", index)}
    try:
        arch = arch_from_config(read_config_json(got["config.json"]), where=f"{repo_id}/config.json")
        return sorted(files_read(arch, _read_weight_map(got[index]))) or None
    except TracingError:
        return None


def _gguf_by_ranges(repo_id: str, commit: str | None, file: str) -> bool:
    """Is a hub model's GGUF file not in the local cache (so read by range requests)?"""
    from huggingface_hub import try_to_load_from_cache
    return commit is not None and not isinstance(try_to_load_from_cache(repo_id, file, revision=commit), str)


def _read_by_ranges(repo_id: str, commit: str | None, files: list[str]) -> bool:
    """Are a hub model's weights safetensors files not all in the local cache (so read by range
    requests)? A model already in the cache is read from there, without network."""
    from huggingface_hub import try_to_load_from_cache
    weights = [f for f in files if f.endswith(".safetensors") and "/" not in f]
    if not weights or commit is None:
        return False
    return not all(isinstance(try_to_load_from_cache(repo_id, f, revision=commit), str) for f in weights)
