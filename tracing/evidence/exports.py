"""Exports of a statement: a CycloneDX 1.6 component of the derived model (its ancestor and the
statement in ``pedigree``) and a suggested Hugging Face model-card block (``base_model``,
``base_model_relation``)."""
from __future__ import annotations

import hashlib
from pathlib import Path

RELATIONS = ("finetune", "quantized", "merge", "adapter")


def _dependent(pred: dict) -> bool:
    r = pred.get("result") or {}
    return any(str(v or "").startswith("dependent") for v in (r.get("verdict"), r.get("aligned_verdict")))


def _subjects(stmt: dict) -> dict[str, dict]:
    return {s["annotations"]["role"]: s for s in stmt["subject"]}


def _hub_id(sub: dict) -> str:
    """``org/repo`` for a hub subject, else its name."""
    name = sub["name"]
    return name[len("hf://"):].split("@", 1)[0] if name.startswith("hf://") else name


def _parents(pred: dict) -> list[str]:
    return [str(p) for p in ((pred.get("merge") or {}).get("parents") or [])]


def _card_id(model: str) -> str:
    """A model id as a card names it: ``org/repo`` without a revision, or a folder's name."""
    if model.startswith(("/", ".", "~")):
        return Path(model).name
    return model.split("@", 1)[0]


def relation(stmt: dict, quant: dict | None = None) -> tuple[str | None, list[str]]:
    """The suggested ``base_model_relation`` and the reasons, from the verdict, the derived model's
    files and format, a quantization faithfulness check (:mod:`tracing.evidence.quant`) and the
    statement's merge attribution (``attest --lineage``). None: no derivation shown."""
    pred, subs = stmt["predicate"], _subjects(stmt)
    parents = _parents(pred)
    if not _dependent(pred):
        return None, ["the test found no dependence; no base_model is suggested (a large p-value does not prove "
                      "independence)"]
    why = [f"{pred['statistic']['name']}: log10 p = {pred['result']['log10_pvalue']} at level "
           f"{pred['result']['level']}: {pred['result']['verdict']}"]
    ft = subs["ft"]["annotations"]
    files = {f["name"] for f in ft.get("files") or []}
    if parents and len(parents) > 1:
        weights = (pred.get("merge") or {}).get("weights") or []
        return "merge", why + [f"merge attribution names {len(parents)} parents: {', '.join(parents)} "
                               f"(weights {', '.join(f'{w:.3g}' for w in weights if isinstance(w, (int, float)))})"]
    if "adapter_config.json" in files:
        return "adapter", why + ["the derived model holds adapter_config.json"]
    if ft.get("format"):
        if quant is None:
            return "quantized", why + [f"the derived model is {ft['format']}; faithfulness not checked "
                                       f"(python -m tracing.quantcheck)"]
        if quant.get("verdict") == "faithful":
            return "quantized", why + [f"faithful quantization of the base ({quant.get('summary')})"]
        return "finetune", why + [f"{ft['format']} file is not a faithful quantization of the base "
                                  f"({quant.get('verdict')}): the weights were changed, then quantized"]
    if pred["values"].get("per_pair") is not None:
        why.append("block map: the derived model's blocks come from the base's (see the statement's correspondence)")
    return "finetune", why


def quant_for(stmt: dict) -> dict | None:
    """The faithfulness check of a quantized derived model against the base (None otherwise)."""
    subs = _subjects(stmt)
    if not _dependent(stmt["predicate"]) or not subs["ft"]["annotations"].get("format"):
        return None
    from .quant import quantcheck
    return quantcheck(subs["base"]["annotations"]["spec"], subs["ft"]["annotations"]["spec"])


def model_card(stmt: dict, statement_file: str | Path, quant: dict | None = None) -> str:
    """YAML front-matter lines for the derived model's card, with the evidence's digest."""
    rel, why = relation(stmt, quant)
    parents = _parents(stmt["predicate"])
    sha = hashlib.sha256(Path(statement_file).read_bytes()).hexdigest()
    subs = _subjects(stmt)
    lines = ["# suggested by model-tracing from signed evidence; check it with python -m tracing.verify",
             f"# evidence: {Path(statement_file).name} sha256 {sha}"]
    lines += [f"# {w}" for w in why]
    if rel is None:
        return "\n".join(lines) + "\n"
    bases = [_card_id(p) for p in parents] if rel == "merge" and parents else [_hub_id(subs["base"])]
    lines += ["base_model:"] + [f"- {b}" for b in bases] + [f"base_model_relation: {rel}"]
    return "\n".join(lines) + "\n"


def _component(sub: dict, **kw):
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.component import Component, ComponentType
    return Component(name=sub["name"], type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref=sub["name"],
                     hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sub["digest"]["sha256"])], **kw)


def cyclonedx(stmt: dict, statement_file: str | Path) -> str:
    """A CycloneDX 1.6 BOM (JSON) whose component is the derived model; when the test found
    dependence, ``pedigree.ancestors`` names the base; the statement is an attestation reference."""
    from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Pedigree
    from cyclonedx.output.json import JsonV1Dot6
    pred, subs = stmt["predicate"], _subjects(stmt)
    sha = hashlib.sha256(Path(statement_file).read_bytes()).hexdigest()
    ref = ExternalReference(type=ExternalReferenceType.ATTESTATION, url=XsUri(Path(statement_file).name),
                            comment="in-toto statement (DSSE) of the independence test; python -m tracing.verify",
                            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha)])
    props = [Property(name=f"model-tracing:{k}", value=str(v)) for k, v in (
        ("statistic", pred["statistic"]["name"]), ("log10_pvalue", pred["result"]["log10_pvalue"]),
        ("level", pred["result"]["level"]), ("verdict", pred["result"]["verdict"]))]
    pedigree = Pedigree(ancestors=[_component(subs["base"])]) if _dependent(pred) else None
    bom = Bom()
    bom.metadata.component = _component(subs["ft"], pedigree=pedigree, external_references=[ref], properties=props)
    return JsonV1Dot6(bom).output_as_string(indent=1)


def write_exports(stmt: dict, statement_file, cyclonedx_file=None, card_file=None, quant=None) -> list[str]:
    from ..fileio import atomic_write
    written = []
    if cyclonedx_file:
        atomic_write(cyclonedx_file, cyclonedx(stmt, statement_file))
        written.append(str(cyclonedx_file))
    if card_file:
        atomic_write(card_file, model_card(stmt, statement_file, quant))
        written.append(str(card_file))
    return written
