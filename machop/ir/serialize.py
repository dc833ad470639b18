"""Save and load a MaseGraph without pickling code (load types ``pt`` and ``mz``).

A saved file is ``torch.save`` of plain data, read back with
``torch.load(weights_only=True)``:

- ``format``: ``"machop.pt"`` or ``"machop.mz"``; ``version``: 1
- ``structure``: a JSON string: the registry name of the model and its
  dataset info (None for your own model; ``"shrunk": true`` when the shrink
  pass removed channels from the registry model), its class name, the tensors tied
  together, every parametrization chain (prune masks, k-means weight
  sharing, fixed point) and every module inserted into the fx graph
  (activation masks);
- ``state_dict``: the tensors, masks and codebooks included;
- ``meta`` (``mz`` only): JSON of each node's ``mase`` metadata.

A file holds no code, so loading takes the model: a registry model is built
by name (a shrunk one resized to the shapes its tensors record, no layer
larger than the registry's: `machop.ir.skeleton`); your own model is passed
in (``load_graph(path, model=MyNet())``), of the class the file records
(`check_class`; ``saved_class="OldName"`` for a class renamed since), a
shrunk one resized to the file's shapes the same way (`fit_to_file`).
The file's architecture is checked against the model first (an error names
the first tensor that differs, nothing is touched), then the recorded
structure is re-created from the classes of `machop.nn` (`REBUILDABLE`:
nothing else can be named in a file) and the state dict is loaded strictly.

A file is data from anywhere, and every size it claims is checked before
anything is allocated (`load_payload`): it must be a regular file (not a
directory, device or FIFO), a zip archive as ``torch.save`` writes it (every
record stored, none compressed, none claiming more bytes than the file
holds), whose pickle, scanned without running it, builds objects of at most
`PICKLE_COST_FLOOR` or `PICKLE_COST_PER_BYTE` times the file size. Then the
payload's form (`read_checkpoint`: its records, the structure's every key and
type, the node metadata), every tensor (dense, on the CPU, no more elements
than its data holds: `check_state`), a registry model's size (built on the
meta device first and compared), every class, spec and tensor of the
structure (`machop.nn.rebuild`) and every inserted module's name and place are
checked before the model is changed. Every refusal is one line naming the
file, a ValueError (`BadFileError`, `ArchitectureMismatch`,
`machop.nn.rebuild.RebuildError`); a missing file is also a FileNotFoundError.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import re
import zipfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from machop.datasets import DatasetInfo
from machop.files import BadFileError, atomic_write, open_regular, pickle_cost
from machop.models import MODELS, get_model
from machop.nn import has_tensor, is_rebuildable, rebuild, spec_of, stored, tied_tensors
from machop.nn.rebuild import short

from .graph import MaseGraph, PassContext
from .skeleton import ShrunkShapeError, materialize, registry_skeleton, resize_layers
from .untrusted import Anything, JsonLimits, Obj, SchemaError, check_schema, json_cost, parse_untrusted

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class ArchitectureMismatch(ValueError):
    """A file's model differs from the model given to load it into; ``str(err)`` names the first difference."""


# --------------------------------------------------------------------------- signatures


def signature_of(state: dict[str, torch.Tensor]) -> list[list]:
    """``[key, shape, dtype]`` for every entry of a state dict, in its order."""
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]


def state_signature(model: nn.Module) -> list[list]:
    """The `signature_of` the model's state dict."""
    return signature_of(model.state_dict())


def base_signature(signature: list[list], structure: dict) -> list[list]:
    """The signature of the dense architecture underneath ``structure``.

    ``a.parametrizations.w.original`` becomes ``a.w``; other parametrization
    tensors and those of inserted modules are dropped.
    """
    inserted = tuple(rec["name"] + "." for rec in structure.get("inserted", []))
    out = []
    for key, shape, dtype in signature:
        if inserted and key.startswith(inserted):
            continue
        if ".parametrizations." in f".{key}":
            head, _, tail = f".{key}".partition(".parametrizations.")
            tensor, _, rest = tail.partition(".")
            if rest != "original":
                continue
            key = f"{head}.{tensor}".lstrip(".")
        out.append([key, shape, dtype])
    return out


def same_signature(a: list[list], b: list[list]) -> bool:
    """Signatures equal as sets of (key, shape, dtype): state-dict order does not matter for loading."""
    return len(a) == len(b) and {k: (s, d) for k, s, d in a} == {k: (s, d) for k, s, d in b}


def first_mismatch(got: list[list], want: list[list]) -> str:
    """The first difference between the model's signature ``got`` and the file's ``want``, in words."""
    got_map, want_map = {k: (s, d) for k, s, d in got}, {k: (s, d) for k, s, d in want}
    for key, shape, dtype in want:
        if key not in got_map:
            return f"the model has no tensor {key!r}"
        if got_map[key] != (shape, dtype):
            s, d = got_map[key]
            return f"{key!r} is {d}{s} in the model but {dtype}{shape} in the file"
    for key, _, _ in got:
        if key not in want_map:
            return f"the model has a tensor {key!r} that the file does not"
    return "no difference"


def check_architecture(graph: MaseGraph, signature: list[list], structure: dict | None) -> None:
    """Raise `ArchitectureMismatch` unless ``graph``'s dense model is the one the file was saved from."""
    structure = structure or {}
    got = state_signature(graph.model)
    want = base_signature(signature, structure) if structure else signature
    if not same_signature(got, want):
        raise ArchitectureMismatch(first_mismatch(got, want))
    want_ties = sorted(sorted(g) for g in structure.get("ties", []))
    got_ties = sorted(sorted(g) for g in tied_tensors(graph.model))
    if "ties" in structure and want_ties != got_ties:
        raise ArchitectureMismatch(f"tied tensors differ: the file ties {want_ties or 'none'}, the model {got_ties or 'none'}")


def class_name(model: nn.Module | MaseGraph) -> str:
    """The name of the model's class, as a file records it.

    A traced model's (`MaseGraph` names its ``fx.GraphModule`` after the
    class it traced), never a parametrization's ``Parametrized...`` class.
    """
    root = model.model if isinstance(model, MaseGraph) else model
    cls = type(root)
    if parametrize.is_parametrized(root):
        cls = cls.__bases__[0]  # the class parametrize derived the Parametrized* one from
    return cls.__name__


def check_class(structure: dict | None, model: nn.Module | MaseGraph, source: str,
                saved_class: str | None = None) -> None:
    """`ArchitectureMismatch` unless ``model`` is of the class the file records (or ``saved_class``).

    Two classes with the same parameter shapes would take each other's
    weights silently; a renamed class opens with ``saved_class="OldName"``.
    A file that records no class (a plain state dict) is not checked.
    """
    recorded = (structure or {}).get("class")
    if recorded is None:
        return
    given = class_name(model)
    if recorded in (given, f"Parametrized{given}", saved_class):  # Parametrized*: files of a parametrized root
        return
    hint = (f'saved_class="{saved_class}" names neither' if saved_class is not None else
            f'if {given} is {recorded} renamed, pass saved_class="{recorded}"')
    raise ArchitectureMismatch(f"{source} holds class {recorded}, not the {given} given; {hint}")


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parameter and buffer on the meta device: its architecture, no memory.

    Tied tensors stay tied (one meta tensor each).
    """
    memo: dict[int, Any] = {}
    for t in (*model.parameters(), *model.buffers()):
        meta = t.detach().to("meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def fit_to_file(root: nn.Module, signature: list[list], structure: dict | None, source: str) -> bool:
    """Resize ``root``'s channel layers in place to the smaller shapes of a shrunk model's file; True if any was.

    Applies to a file recording ``"shrunk": true`` (the shrink pass removed
    channels; a file of the class's own shapes is checked as it is); ``signature`` is the file's
    ``[[key, shape, dtype], ...]``. It is tried first on a copy of ``root``
    on the meta device (no memory): a layer the file claims larger, or of
    another rank or kernel (`resize_layers` with ``bounded``), or a resized
    model that still differs from the file, is a one-line
    `ArchitectureMismatch` naming ``source``, and ``root`` is left as it was
    (unless it cannot be deep-copied: then it is resized in place, each
    layer's shape still checked before any changes). Then only the file's
    shapes are allocated, for the layers replaced (new ones are zeros: the
    file's weights are loaded into them next).
    """
    if structure is None or not structure.get("shrunk"):
        return False
    want = base_signature(signature, structure)
    before = state_signature(root)
    if same_signature(before, want):
        return False
    shapes = {key: list(shape) for key, shape, _ in want}
    try:
        probe = _meta_copy(root)
    except Exception as e:  # deepcopy raises whatever an attribute of the user's model raises
        logger.info("%s: cannot copy the model to check its resizing first (%s); resizing it in place", source, e)
        probe = None
    try:
        resize_layers(probe if probe is not None else root, shapes, bounded=True)
    except ShrunkShapeError as e:  # a layer the file claims larger than the model's, or reshaped
        raise ArchitectureMismatch(f"{source} does not fit the model: {e}") from None
    got = state_signature(probe if probe is not None else root)
    if same_signature(got, before):
        return False  # no layer to resize: the caller's check names the difference
    if not same_signature(got, want):
        raise ArchitectureMismatch(f"{source} does not fit the model with its layers resized to the file's: "
                                   f"{first_mismatch(got, want)}")
    if probe is not None:
        resize_layers(root, shapes, bounded=True)
    old = {key: shape for key, shape, _ in before}
    resized = [key.rpartition(".")[0] for key, shape, _ in got
               if key.rpartition(".")[2] == "weight" and old.get(key, shape) != shape]
    logger.info("%s: %d layer(s) resized to the file's shapes (a shrunk model): %s",
                source, len(resized), ", ".join(resized[:8]))
    return True


def describe_structure(graph: MaseGraph) -> dict:
    """The JSON-able record of the model and of everything passes added to it."""
    ctx = graph.context
    inserted = []
    for node in graph.nodes:
        module = graph.module_of(node)
        if module is not None and is_rebuildable(module):
            user = next(iter(node.users))
            inserted.append({
                "name": node.target,
                "user": user.name,
                "arg": user.args.index(node),
                "class": type(module).__name__,
                "spec": spec_of(module),
            })
    chains = []
    for qualname, module in graph.model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name, plist in module.parametrizations.items():
                for p in plist:
                    if not is_rebuildable(p):
                        raise ValueError(f"cannot save: parametrization {type(p).__name__} of {qualname} is not rebuildable")
                chains.append({
                    "module": qualname,
                    "tensor": tensor_name,
                    "chain": [{"class": type(p).__name__, "spec": spec_of(p)} for p in plist],
                })
    return {
        "model": ctx.model_name,
        **({"shrunk": True} if ctx.shrunk else {}),  # absent: the class's own shapes
        "dataset_info": asdict(ctx.dataset_info) if ctx.dataset_info is not None else None,
        "class": class_name(graph.model),  # a file opens only into this class (`check_class`)
        "ties": tied_tensors(graph.model),
        "inserted": inserted,
        "parametrizations": chains,
    }


def save_graph(graph: MaseGraph, path: str | os.PathLike, load_type: str = "mz") -> Path:
    """Write ``graph`` to ``path`` atomically (``pt``: model; ``mz``: plus node metadata).

    The file is serialised in memory first: torch.save's zip writer turns a
    full disk into a RuntimeError, a plain write keeps the OSError.
    """
    if load_type not in ("pt", "mz"):
        raise ValueError(f"load_type must be 'pt' or 'mz', got {load_type!r}")
    payload: dict[str, Any] = {
        "format": f"machop.{load_type}",
        "version": FORMAT_VERSION,
        "structure": json.dumps(describe_structure(graph)),
        "state_dict": {k: v.detach().cpu() for k, v in graph.model.state_dict().items()},
    }
    if load_type == "mz":
        meta = {n.name: n.meta.get("mase", {}) for n in graph.nodes}
        payload["meta"] = json.dumps(meta, default=str)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, buffer.getvalue())


# --------------------------------------------------------------------------- reading a file that came from anywhere

PICKLE_COST_FLOOR = 64 << 20
"""Estimated bytes the objects of a file's pickle may take (or `PICKLE_COST_PER_BYTE` times the file size, if more)."""
PICKLE_COST_PER_BYTE = 8
_NAME = re.compile(r"[A-Za-z0-9_]{1,200}")
_PATH = re.compile(r"[A-Za-z0-9_]{1,200}(\.[A-Za-z0-9_]{1,200}){0,50}")  # an inserted module: fx writes it into code
_KEY = re.compile(r"[^\s.'\"\\]{1,200}(\.[^\s.'\"\\]{1,200}){0,50}")  # a module or tensor a file names: only looked up


def check_archive(f: BinaryIO, path: Path, size: int) -> None:
    """Refuse a file ``torch.load`` would read beyond its size: every record stored (not compressed),
    lying inside the file, and a pickle whose objects stay within `PICKLE_COST_FLOOR` or
    `PICKLE_COST_PER_BYTE` times the file size.

    ``torch.save`` writes an uncompressed zip; a deflated record would be
    inflated to its claimed size (a 15 KB file can hold a 1 GB pickle).
    """
    bad = f"{path} is not a readable PyTorch weights file"
    try:
        archive = zipfile.ZipFile(f)
        records = archive.infolist()
    except Exception:  # zipfile raises many types for a file that is not a zip or a broken one
        raise BadFileError(f"{bad} (not a zip archive as torch.save writes)") from None
    names: set[str] = set()
    pickles = []
    for info in records:
        name = short(info.filename)
        if info.filename in names:
            raise BadFileError(f"{bad} (record {name} appears twice)")
        names.add(info.filename)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise BadFileError(f"{bad} (record {name} is compressed or encrypted; torch.save stores records as they are)")
        if info.file_size != info.compress_size or info.header_offset + info.compress_size > size:
            raise BadFileError(f"{bad} (record {name} claims {info.file_size} bytes that the file does not hold)")
        if info.filename.endswith("/data.pkl") and info.filename.count("/") == 1:
            pickles.append(info)
    if len(pickles) != 1:
        raise BadFileError(f"{bad} ({len(pickles)} data.pkl records, expected one)")
    limit = max(PICKLE_COST_FLOOR, PICKLE_COST_PER_BYTE * size)
    try:
        cost = pickle_cost(archive.read(pickles[0]), limit)
    except Exception as e:  # malformed pickle, bad CRC, record beyond the file
        raise BadFileError(f"{bad} (its data.pkl is broken: {type(e).__name__})") from None
    if cost > limit:
        raise BadFileError(f"{path}: its data.pkl would build objects of more than {limit >> 20} MiB from a "
                             f"{size}-byte file; refused")


def load_payload(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` of a regular file, checked first (`check_archive`); one-line errors.

    Raises `NoSuchFile`, `IsADirectory` or `BadFileError` (all ValueErrors).
    """
    path = Path(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        check_archive(f, path, size)
        f.seek(0)
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a corrupt or foreign file
            raise BadFileError(f"{path} is not a readable PyTorch weights file ({type(e).__name__})") from None


def check_state(state: Any, source: str) -> dict[str, torch.Tensor]:
    """``state`` if it is a table of dense CPU tensors, none claiming more elements than its data holds."""
    if not isinstance(state, dict):
        raise BadFileError(f"{source}: its state dict is a {type(state).__name__}, not a table of tensors")
    for key, t in state.items():
        if not isinstance(key, str):
            raise BadFileError(f"{source}: state dict key {short(key)} is not text")
        if type(t) not in (torch.Tensor, nn.Parameter):
            raise BadFileError(f"{source}: {short(key)} is a {type(t).__name__}, not a tensor")
        if t.layout != torch.strided or t.device.type != "cpu" or t.is_quantized:
            raise BadFileError(f"{source}: {short(key)} is not a dense tensor ({t.layout}, {t.device.type})")
        need, have = t.numel() * t.element_size(), t.untyped_storage().nbytes()
        if need > have:
            raise BadFileError(f"{source}: tensor {short(key)} claims shape {list(t.shape)} ({need} bytes) "
                                 f"over {have} bytes of data")
    return state


# A structure or meta record (torch files): read as untrusted JSON (`machop.ir.untrusted`); the objects it
# may build are bounded by the caller's budget (``max_cost``), set per file.
RECORD_LIMITS = JsonLimits(max_bytes=1 << 30, max_depth=64, max_key=1 << 14, max_string=1 << 20)


def parse_json(text: Any, source: str, what: str, limit: int | None = None) -> Any:
    """The JSON value of a record, read by `machop.ir.untrusted.parse_untrusted`: one-line `BadFileError`.

    With ``limit``, text whose `json_cost` exceeds it is refused unparsed.
    """
    return parse_untrusted(text, source, what, replace(RECORD_LIMITS, max_cost=limit))


_STRUCTURE_KEYS = {"model", "dataset_info", "class", "inserted", "parametrizations"}
MAX_INSERTED = 4096  # modules inserted into the fx graph (this machop inserts at most two per layer)
MAX_CHAIN = 8  # parametrizations on one tensor (this machop makes at most two: a mask, a quantizer)
_DATASET_INFO = {"num_classes": (int, 1, 1_000_000), "in_channels": (int, 1, 10_000)}


def _table(value: Any, keys: set[str], optional: set[str], where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table, got {type(value).__name__}")
    unknown, missing = sorted(set(value) - keys - optional, key=str), sorted(keys - set(value))
    if unknown:
        raise ValueError(f"{where} has unknown key {short(unknown[0])}")
    if missing:
        raise ValueError(f"{where} lacks key {missing[0]!r}")
    return value


def _text(value: Any, where: str, pattern: re.Pattern | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)) or len(value) > 1000:
        raise ValueError(f"{where} must be {'a name' if pattern is not None else 'text'}, got {short(value)}")


def _list(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _structure_errors(structure: Any) -> None:
    """ValueError (without the file's name) at the first thing wrong in a structure record."""
    s = _table(structure, _STRUCTURE_KEYS, {"ties", "shrunk"}, "the record")
    _text(s["model"], "model", _NAME, optional=True)
    if "shrunk" in s and not isinstance(s["shrunk"], bool):
        raise ValueError(f"shrunk must be true or false, got {short(s['shrunk'])}")
    _text(s["class"], "class", _NAME, optional=True)
    if s["dataset_info"] is not None:
        info = _table(s["dataset_info"], {"name", *_DATASET_INFO, "image_size"}, set(), "dataset_info")
        _text(info["name"], "dataset_info.name", _NAME)
        for key, (typ, lo, hi) in _DATASET_INFO.items():
            v = info[key]
            if not isinstance(v, typ) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"dataset_info.{key} must be an integer of {lo} to {hi}, got {short(v)}")
        size = info["image_size"]
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 100_000 for v in size)):
            raise ValueError(f"dataset_info.image_size must be two integers of 1 to 100000, got {short(size)}")
    for i, group in enumerate(_list(s.get("ties", []), "ties")):
        if not isinstance(group, (list, tuple)) or len(group) < 2:
            raise ValueError(f"ties[{i}] must be a list of two or more tensor names")
        for name in group:
            _text(name, f"ties[{i}]", _KEY)
    if len(_list(s["inserted"], "inserted")) > MAX_INSERTED:
        raise ValueError(f"inserted lists more than {MAX_INSERTED} modules")
    for i, rec in enumerate(s["inserted"]):
        where = f"inserted[{i}]"
        _table(rec, {"name", "user", "arg", "class", "spec"}, set(), where)
        _text(rec["name"], f"{where}.name", _PATH)
        _text(rec["user"], f"{where}.user", _NAME)
        _text(rec["class"], f"{where}.class")
        if not isinstance(rec["arg"], int) or isinstance(rec["arg"], bool) or not 0 <= rec["arg"] < 1000:
            raise ValueError(f"{where}.arg must be an input position, got {short(rec['arg'])}")
        if not isinstance(rec["spec"], dict):
            raise ValueError(f"{where}.spec must be a table, got {type(rec['spec']).__name__}")
    for i, rec in enumerate(_list(s["parametrizations"], "parametrizations")):
        where = f"parametrizations[{i}]"
        _table(rec, {"module", "tensor", "chain"}, set(), where)
        if rec["module"] != "":
            _text(rec["module"], f"{where}.module", _KEY)
        _text(rec["tensor"], f"{where}.tensor", _KEY)
        if "." in rec["tensor"]:
            raise ValueError(f"{where}.tensor must be a name, got {short(rec['tensor'])}")
        if not 1 <= len(_list(rec["chain"], f"{where}.chain")) <= MAX_CHAIN:
            raise ValueError(f"{where}.chain must hold 1 to {MAX_CHAIN} entries")
        for j, p in enumerate(rec["chain"]):
            _table(p, {"class", "spec"}, set(), f"{where}.chain[{j}]")
            _text(p["class"], f"{where}.chain[{j}].class")
            if not isinstance(p["spec"], dict):
                raise ValueError(f"{where}.chain[{j}].spec must be a table, got {type(p['spec']).__name__}")


def check_structure(structure: Any, source: str) -> dict:
    """``structure`` if it is a well-formed record of `describe_structure`; else `BadFileError` naming ``source``.

    Every key, type and name is checked (extra and missing keys are errors);
    the classes and specs are checked by `machop.nn.rebuild` when re-created.
    """
    try:
        _structure_errors(structure)
    except ValueError as e:
        raise BadFileError(f"{source}: bad structure record: {e}") from None
    return structure


META_SCHEMA = Obj(rest=Obj(rest=Anything()))  # node name -> its metadata table


def check_meta(meta: Any, source: str) -> dict:
    """``meta`` if it is a table of tables (node name -> metadata); else `BadFileError` naming ``source``."""
    try:
        return check_schema(meta, META_SCHEMA)
    except SchemaError:
        raise BadFileError(f"{source}: its node metadata must be a table of tables") from None


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """A Lightning checkpoint's state dict with the LightningModule's ``model.`` prefix removed."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


_MACHOP_KEYS = {"format", "version", "structure", "state_dict"}


def read_checkpoint(path: str | os.PathLike, load_type: str) -> tuple[dict[str, torch.Tensor], dict | None, dict | None]:
    """(state dict, structure or None, node metadata or None) of a ``pl``, ``pt`` or ``mz`` file.

    ``pl`` is a Lightning checkpoint (its ``model.`` prefix removed), ``pt`` a
    machop file or a plain state dict from any tool, ``mz`` a machop file.
    Everything is checked before it is returned: the state dict
    (`check_state`), the structure (`check_structure`) and the metadata.
    """
    payload = load_payload(path)
    source = str(path)
    budget = max(PICKLE_COST_FLOOR, PICKLE_COST_PER_BYTE * os.stat(path).st_size)  # for the JSON records, together
    if not isinstance(payload, dict):
        raise BadFileError(f"{path} does not hold a state dict")
    if load_type == "pl":
        if "state_dict" not in payload:
            raise BadFileError(f"{path} is not a Lightning checkpoint (no 'state_dict'); try --load-type pt")
        state = check_state(payload["state_dict"], source)
        stripped = strip_prefix(state)
        if len(stripped) != len(state):
            raise BadFileError(f"{path}: its state dict holds both 'model.X' and 'X' for some tensor X")
        structure = payload.get("machop_structure")
        if structure is not None:
            structure = check_structure(parse_json(structure, source, "machop_structure", budget), source)
        return stripped, structure, None
    fmt = payload.get("format")
    if fmt in ("machop.pt", "machop.mz"):
        if payload.get("version") != FORMAT_VERSION:
            raise BadFileError(f"{path} has format version {short(payload.get('version'))}, "
                                 f"this machop reads {FORMAT_VERSION}")
        keys = _MACHOP_KEYS | {"meta"} if fmt == "machop.mz" else _MACHOP_KEYS
        unknown, missing = sorted(set(payload) - keys, key=str), sorted(_MACHOP_KEYS - set(payload))
        if unknown or missing:
            what = f"unknown record {short(unknown[0])}" if unknown else f"no {missing[0]!r} record"
            raise BadFileError(f"{path} is a broken {fmt} file ({what})")
        texts = [payload["structure"], payload.get("meta", "")]
        if all(isinstance(t, str) for t in texts) and sum(map(json_cost, texts)) > budget:
            raise BadFileError(f"{path}: its structure and meta records would build objects of more than "
                                 f"{budget >> 20} MiB; refused")
        meta = check_meta(parse_json(payload["meta"], source, "meta", budget), source) if "meta" in payload else None
        structure = check_structure(parse_json(payload["structure"], source, "structure", budget), source)
        return check_state(payload["state_dict"], source), structure, meta
    if load_type == "mz":
        raise BadFileError(f"{path} is not a machop mz file")
    if not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise BadFileError(f"{path} is neither a machop file nor a plain state dict")
    return check_state(payload, source), None, None


def base_graph(
    structure: dict | None,
    model: nn.Module | MaseGraph | None,
    source: str,
    context: PassContext | None = None,
    model_name: str | None = None,
    dataset_info: Any = None,
    signature: list[list] | None = None,
    saved_class: str | None = None,
) -> MaseGraph:
    """The dense graph a file's weights go into: ``model`` if given, else the registry model the file names.

    A given ``model`` must be of the class the file records (`check_class`;
    ``saved_class`` names the class a renamed one was saved as), checked
    before it is traced; with the file's ``signature``, a shrunk model's
    layers are then resized to the file's shapes (`fit_to_file`: checked on
    the meta device first).

    ``model_name`` and ``dataset_info`` name the registry model of a file
    that does not record one (a plain state dict). With the file's
    ``signature``, a registry model is first built on the meta device (no
    memory) and checked against it, so a file's dataset info cannot make
    machop build a model larger than the weights the file holds. A file
    recording ``"shrunk": true`` (the shrink pass removed channels) gets the
    registry model with its Conv/Linear/BatchNorm layers resized to the
    file's shapes (`machop.ir.skeleton.registry_skeleton`: none larger than
    the registry's), built from the meta device at that size.
    """
    if structure is not None:
        check_structure(structure, source)
    if model is not None:
        check_class(structure, model, source, saved_class)
        graph = model if isinstance(model, MaseGraph) else MaseGraph(model)
        if signature is not None:
            fit_to_file(graph.model, signature, structure, source)
        if context is not None:
            graph.context = context
        if structure and structure.get("model") and graph.context.model_name in (None, structure["model"]):
            graph.context.model_name = structure["model"]
            graph.context.shrunk = bool(structure.get("shrunk"))
        return graph
    if structure is not None and structure.get("model") is None:
        cls = structure.get("class") or "model"
        raise ValueError(
            f"{source} holds your own model ({cls}), not a registry model: a file holds no code, so pass the "
            f"model to load it into, e.g. load_graph(path, model={cls}(...)) or load_compressed(path, model={cls}(...))"
        )
    shrunk = bool(structure and structure.get("shrunk"))
    if structure is not None:
        model_name = structure["model"]
        dataset_info = DatasetInfo(**structure["dataset_info"]) if structure.get("dataset_info") else None
    if model_name is None or dataset_info is None:
        raise ValueError(f"{source} does not name its model: give the model and dataset")
    if model_name not in MODELS:
        raise ValueError(f"{source} holds a {model_name!r}, which is not in this machop's model registry")
    if shrunk and signature is None:
        raise ValueError(f"{source} holds a shrunk {model_name}: its tensors' shapes are needed to build it")
    probe = None
    if signature is not None:
        want = base_signature(signature, structure) if structure else signature
        try:
            probe = registry_skeleton(model_name, dataset_info, want if shrunk else None)
        except ShrunkShapeError as e:  # a layer the file claims larger than the registry's, or reshaped
            raise ArchitectureMismatch(f"{source} does not fit a shrunk {model_name}: {e}") from None
        except Exception as e:  # a dataset_info the model cannot be built for
            raise BadFileError(f"{source}: cannot build a {model_name} for its dataset info ({type(e).__name__})") from None
        got = state_signature(probe)
        if not same_signature(got, want):
            raise ArchitectureMismatch(f"{source} does not fit the model: {first_mismatch(got, want)}")
    context = context if context is not None else PassContext()
    context.model_name, context.dataset_info, context.shrunk = model_name, dataset_info, shrunk
    built = materialize(probe) if shrunk else get_model(model_name, dataset_info)
    return MaseGraph(built, context=context)


def load_model(
    path: str | os.PathLike,
    load_type: str,
    model: nn.Module | MaseGraph | None = None,
    model_name: str | None = None,
    dataset_info: Any = None,
    context: PassContext | None = None,
    saved_class: str | None = None,
) -> MaseGraph:
    """Rebuild a MaseGraph from a ``pl``/``pt``/``mz`` file (see `base_graph` for which model and ``saved_class``).

    Every error is one line naming the file, a ValueError (`BadFileError`,
    `ArchitectureMismatch`, `machop.nn.rebuild.RebuildError`), raised before
    the model is changed: the file is read and checked first, then the
    architecture, then every recorded module is re-created and checked, and
    only then are they added to the model and the weights loaded.
    """
    state, structure, meta = read_checkpoint(path, load_type)
    signature = signature_of(state)
    graph = base_graph(structure, model, str(path), context, model_name, dataset_info, signature=signature,
                       saved_class=saved_class)
    try:
        check_architecture(graph, signature, structure)
    except ArchitectureMismatch as e:
        raise ArchitectureMismatch(f"{path} does not fit the model: {e}") from None
    if structure is not None:
        apply_structure(graph, structure, state, source=str(path))
    try:
        graph.model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ArchitectureMismatch(f"{path} does not fit the model: {' '.join(first[1:2] or first[:1]).strip()}") from None
    for node in graph.nodes:
        if meta and node.name in meta:
            node.meta["mase"] = meta[node.name]
    return graph


def load_graph(
    path: str | os.PathLike, model: nn.Module | MaseGraph | None = None, context: PassContext | None = None,
    saved_class: str | None = None,
) -> MaseGraph:
    """Rebuild a MaseGraph saved by `save_graph` (either load type).

    A registry model is rebuilt by the name in the file; for your own model
    pass it (``model=MyNet()``, or a `MaseGraph` of it when tracing needs
    ``leaf_modules``). It must be of the class the file records (a file of
    a ``TinyNet`` does not open into an ``OtherNet``, even with the same
    shapes); for a class renamed since, ``saved_class="OldName"`` names the
    class the file was saved as. Its architecture is checked against the
    file first; a shrunk model (the shrink pass) is resized to the file's
    shapes, no layer larger than the model's (`fit_to_file`).
    """
    return load_model(path, "pt", model=model, context=context, saved_class=saved_class)  # "pt": both formats


def load_weights(graph: MaseGraph, path: str | os.PathLike, load_type: str) -> None:
    """Load a checkpoint's weights into ``graph`` in place, keeping its masks and codebooks.

    A dense checkpoint's ``X.weight`` fills ``X.parametrizations.weight.original``
    of a pruned layer; every other key must match exactly.
    """
    state, _, _ = read_checkpoint(path, load_type)
    own = graph.model.state_dict()
    mapped = {}
    for key, value in state.items():
        module, _, tensor = key.rpartition(".")
        reparam = f"{module}.parametrizations.{tensor}.original".lstrip(".")
        mapped[reparam if key not in own and reparam in own else key] = value
    missing = [k for k in own if k not in mapped and ".parametrizations." not in k]
    unexpected = [k for k in mapped if k not in own]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    try:
        graph.model.load_state_dict(mapped, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ArchitectureMismatch(f"{path} does not fit the model: {' '.join(first[1:2] or first[:1]).strip()}") from None


def _own_module(model: nn.Module, qualname: str, where: str) -> nn.Module:
    """The model's module ``qualname``: one of its own, not a parametrization's nor an inserted one."""
    try:
        module = model.get_submodule(qualname)
    except AttributeError:
        raise BadFileError(f"{where}: the model has no module {qualname!r}") from None
    parts = qualname.split(".") if qualname else []
    parents = [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
    if "parametrizations" in parts or any(is_rebuildable(m) for m in parents):
        raise BadFileError(f"{where}: {qualname!r} is not one of the model's own modules")
    return module


def _check_free(model: nn.Module, name: str, taken: set[str], where: str) -> None:
    """``name`` can be added as a submodule: nothing of the model is called that, nor a path through it."""
    if name in taken:
        raise BadFileError(f"{where}: inserted twice")
    parts = name.split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts))}
    if "parametrizations" in parts or prefixes & taken or any(t.startswith(name + ".") for t in taken):
        raise BadFileError(f"{where}: the name clashes with a parametrization or another inserted module")
    parent: nn.Module | None = model
    for i, part in enumerate(parts):
        if parent is None:  # a new intermediate module: nothing below it exists
            break
        child = parent._modules.get(part)
        last = i == len(parts) - 1
        if (last and (child is not None or hasattr(parent, part))) or (child is None and hasattr(parent, part)):
            raise BadFileError(f"{where}: the model already has {'.'.join(parts[: i + 1])!r}")
        if child is not None and (is_rebuildable(child) or part == "parametrizations"):
            raise BadFileError(f"{where}: {'.'.join(parts[: i + 1])!r} is not one of the model's own modules")
        parent = child
    taken.add(name)


def _insert_all(graph: fx.Graph, inserted: list[dict], where: str, insert) -> None:
    """``insert(rec, user_node)`` for each record in saved order, a record whose user is an inserted node
    waiting until that node exists; ``insert`` returns the new node."""
    by_name = {n.name: n for n in graph.nodes}
    pending = list(inserted)
    while pending:
        ready = [rec for rec in pending if rec["user"] in by_name]
        if not ready:
            raise BadFileError(f"{where}: a module is inserted before unknown node {short(pending[0]['user'])}")
        for rec in ready:
            user = by_name[rec["user"]]
            if rec["arg"] >= len(user.args) or not isinstance(user.args[rec["arg"]], fx.Node):
                raise BadFileError(f"{where}: node {user.name!r} has no input {rec['arg']} to insert {rec['name']!r} on")
            new = insert(rec, user)
            by_name[new.name] = by_name[rec["name"]] = new  # later records name it as it was saved
        pending = [rec for rec in pending if not any(rec is r for r in ready)]


def apply_structure(graph: MaseGraph, structure: dict, state: dict[str, torch.Tensor],
                    source: str = "saved structure") -> None:
    """Re-create inserted modules and parametrization chains on a fresh graph.

    Sites that hold one tied parameter get the same chain objects, so the
    tie (one parameter, one mask, one codebook) is kept. Everything is
    re-created and checked before the graph is changed (a bad record raises
    a one-line ValueError naming ``source`` and leaves the graph as it was):
    the record's form (`check_structure`), every class, spec and tensor
    (`machop.nn.rebuild`; masks and indices against the tensor they sit on),
    the inserted modules' names and places (on a copy of the fx graph), and
    that every parametrization tensor of the state dict belongs to a chain.
    """
    check_structure(structure, source)
    model = graph.model
    # ---- parametrization chains: re-created and checked, nothing registered yet
    chains: dict[int, tuple[dict, list[nn.Module]]] = {}  # id(stored parameter) → (first record, its chain)
    sites: list[tuple[nn.Module, str, list[nn.Module]]] = []
    lengths: dict[tuple[str, str], int] = {}
    for rec in structure["parametrizations"]:
        site = f"{rec['module']}.{rec['tensor']}".lstrip(".")
        where = f"{source}: parametrization of {site!r}"
        if (rec["module"], rec["tensor"]) in lengths:
            raise BadFileError(f"{where} is listed twice")
        module = _own_module(model, rec["module"], where)
        if not has_tensor(module, rec["tensor"]):
            raise BadFileError(f"{where}: the model has no parameter {site!r}")
        original = stored(module, rec["tensor"])
        key = id(original)
        if key in chains:
            first = chains[key][0]
            if first["chain"] != rec["chain"]:
                other = f"{first['module']}.{first['tensor']}".lstrip(".")
                raise BadFileError(f"{where}: tied to {other!r} but recorded with another chain")
        else:
            prefix = f"{rec['module']}.parametrizations.{rec['tensor']}.".lstrip(".")
            chain = [rebuild(p["class"], p["spec"], state, f"{prefix}{i}.", target=original,
                             where=f"{where}, step {i} ({short(p['class'])})") for i, p in enumerate(rec["chain"])]
            chains[key] = (rec, chain)
        lengths[(rec["module"], rec["tensor"])] = len(rec["chain"])
        sites.append((module, rec["tensor"], chains[key][1]))
    for key in state:  # every parametrization tensor of the file belongs to a recorded chain
        if ".parametrizations." not in f".{key}":
            continue
        head, _, tail = f".{key}".partition(".parametrizations.")
        tensor, _, rest = tail.partition(".")
        n = lengths.get((head.lstrip("."), tensor))
        step, _, name = rest.partition(".")
        if n is None or not (rest == "original" or (step.isdigit() and int(step) < n and name)):
            raise BadFileError(f"{source}: tensor {short(key)} belongs to no recorded parametrization")
    # ---- inserted modules: re-created, names and places checked on a copy of the fx graph
    where = f"{source}: inserted modules"
    modules: dict[int, nn.Module] = {}
    if structure["inserted"]:
        trial = copy.deepcopy(graph.fx_graph)
        taken: set[str] = set()

        def try_insert(rec: dict, user: fx.Node) -> fx.Node:
            here = f"{source}: inserted module {rec['name']!r}"
            _check_free(model, rec["name"], taken, here)
            modules[id(rec)] = rebuild(rec["class"], rec["spec"], state, rec["name"] + ".",
                                       where=f"{here} ({short(rec['class'])})")
            with trial.inserting_before(user):
                new = trial.call_module(rec["name"], (user.args[rec["arg"]],))
            user.update_arg(rec["arg"], new)
            return new

        _insert_all(trial, structure["inserted"], where, try_insert)
    # ---- everything checked: change the graph
    if structure["inserted"]:
        _insert_all(graph.fx_graph, structure["inserted"], where,
                    lambda rec, user: graph.insert_before(user, rec["arg"], rec["name"], modules[id(rec)]))
    for module, tensor, chain in sites:
        for p in chain:
            parametrize.register_parametrization(module, tensor, p, unsafe=True)


def _shapes(source) -> dict[str, list[int]]:
    if isinstance(source, (str, os.PathLike)):
        state, structure, _ = read_checkpoint(source, "pt")
        signature = signature_of(state)
        signature = base_signature(signature, structure) if structure else signature
    elif isinstance(source, dict):
        signature = signature_of(source)
    else:
        signature = source
    return {key: list(shape) for key, shape, _ in signature}


def shrunk_like(model: nn.Module | MaseGraph, source) -> nn.Module | MaseGraph:
    """``model`` (changed in place and returned) with every Conv/Linear/BatchNorm resized to ``source``'s shapes.

    ``model``: an ``nn.Module`` or a `MaseGraph` (its ``.model`` is resized).
    ``source``: a file written by `save_graph` (``pt`` or ``mz``), a state
    dict, or a ``[[key, shape, dtype], ...]`` signature. New tensors are
    zeros: load the file into the result. Layers the source does not list
    are left alone. (The loaders need none of it: `load_graph`,
    `load_compressed` and ``huffman_decode`` resize a model given to them
    themselves, checked first: `fit_to_file`; a registry model's file loads
    by name: `registry_skeleton`.)
    """
    root = model.model if isinstance(model, MaseGraph) else model
    resize_layers(root, _shapes(source), bounded=True)
    return model
