"""A training worker process: ``python -m tracing.demo.worker`` with the job as JSON on stdin.

Trains its list of demo models in order with one torch thread (a parent trained by another worker
is loaded from its saved weights once they are there), reporting progress as JSON lines on stdout;
an error is written to ``<out>/.work/error-<worker>.txt``.
"""
from __future__ import annotations

import copy
import json
import pathlib
import sys
import time

from .recipes import _TINY_STEPS, RECIPES, root_of
from .train import _model_config, _relative_change, _save_model, _train, eval_loss


def _worker_main() -> int:
    """Entry point of a training worker process: job as JSON on stdin, progress as JSON lines on stdout."""
    job = json.loads(sys.stdin.read())
    out = pathlib.Path(job["out"])
    try:
        _train_chain(out, job["names"], job["vocab_size"], job["tiny"])
        return 0
    except BaseException as err:  # one line for the parent to report
        msg = " ".join(f"{type(err).__name__}: {err}".split())
        (out / ".work" / f"error-{job['worker']}.txt").write_text(msg + "\n", encoding="utf-8")
        return 1


def _emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _train_chain(out: pathlib.Path, names: list[str], vocab_size: int, tiny: bool) -> None:
    import torch
    import transformers
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    blocks = load_file(str(out / ".work" / "blocks.safetensors"))
    models = {}
    for k, name in enumerate(names):
        r = RECIPES[name]
        steps = _TINY_STEPS if tiny else r.steps
        if r.parent is None:
            torch.manual_seed(r.init_seed)
            model = transformers.LlamaForCausalLM(_model_config(vocab_size))
        else:
            if r.parent not in models:  # trained by the other worker: start from its saved weights
                models[r.parent] = _trained_elsewhere(out, r.parent)
            model = copy.deepcopy(models[r.parent])
        start = time.time()
        _emit(event="start", name=name, steps=steps)
        train_losses = _train(model, blocks[r.data], steps=steps, lr=r.lr, warmup=min(r.warmup, steps),
                              seed=r.data_seed,
                              on_step=lambda step, loss: _emit(event="step", name=name, step=step, loss=loss))
        loss = eval_loss(model, blocks["eval"])
        models[name] = model
        _save_model(model, out / name)
        tail = train_losses[-10:]
        record = {
            "parent": r.parent,
            "root": root_of(name),
            "init_seed": r.init_seed,
            "data": r.data,
            "data_seed": r.data_seed,
            "steps": steps,
            "lr": r.lr,
            "final_train_loss": round(sum(tail) / len(tail), 6),
            "final_eval_loss": float(loss),
            "relative_change_from_parent": (
                None if r.parent is None else round(_relative_change(models[r.parent], model), 6)
            ),
            "train_seconds": round(time.time() - start, 2),
        }
        (out / ".work" / f"{name}.json").write_text(json.dumps(record), encoding="utf-8")
        _emit(event="done", name=name, eval_loss=loss, steps=steps, data=r.data, seconds=record["train_seconds"])
        later = names[k + 1:]
        for old in list(models):  # keep only models that a later one in this chain starts from
            if not any(RECIPES[n].parent == old for n in later):
                del models[old]




def _trained_elsewhere(out: pathlib.Path, name: str, poll_s: float = 0.2):
    """Model ``name`` once another worker has saved it (its record is written after the weights);
    an error of any worker stops the wait."""
    import torch
    import transformers

    work = out / ".work"
    while not (work / f"{name}.json").exists():
        failed = sorted(work.glob("error-*.txt"))
        if failed:
            raise RuntimeError(f"waiting for {name}: another training worker failed "
                               f"({failed[0].read_text(encoding='utf-8').strip()})")
        time.sleep(poll_s)
    return transformers.LlamaForCausalLM.from_pretrained(out / name, dtype=torch.float32)


if __name__ == "__main__":
    sys.exit(_worker_main())
