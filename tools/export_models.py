#!/usr/bin/env python3
"""Export public image-classification architectures to ONNX for the
onnxprune coverage benchmark.

Runs in a *separate* torch environment (see tools/README.md), never in the
main onnxprune venv:

    /tmp/torchvenv/bin/python tools/export_models.py --out /work/archs

What it exports (always with random weights: ``weights=None`` /
``pretrained=False``, ``torch.manual_seed(0)``, ``model.eval()``):

* ``torchvision``: every classification model returned by
  ``torchvision.models.list_models(module=torchvision.models)``;
* ``timm``: the curated sample in ``TIMM_SAMPLE`` below (small variant of
  each family), or any timm model named with ``--names``.

Each model is exported at its default input resolution, batch axis dynamic,
to ``OUT/<source>__<name>.onnx`` with the legacy TorchScript exporter
(``dynamo=False``, ``do_constant_folding=True``) at ``--opset``; if that
fails, it is retried once with the dynamo exporter.  Every export runs in its
own subprocess with a timeout, so a crash or a hang only loses that model.
Models with more than ``--max-params`` parameters are skipped (their file
would be larger than ~600 MB).  After each export the file is checked with
``onnx.checker.check_model(path, full_check=True)``; if onnxruntime is
importable, the file is also run at batch 2 and compared against PyTorch.

``OUT/manifest.json`` holds one record per model and is rewritten after
every model, so an interrupted run still leaves a usable manifest;
``--resume`` keeps the records (and files) of models already exported ok.
Per-model logs (exporter warnings, tracebacks) go to ``OUT/logs/``.

Randomly initialised networks have degenerate normalisation layers
(BatchNorm running_mean=0, running_var=1, weight=1, bias=0; LayerNorm
weight=1, bias=0; zero biases), so after BN folding every Conv bias is
all-zero and the TorchScript exporter de-duplicates those identical
initialisers into chains of ``Identity`` nodes -- a graph shape that no
trained model has.  By default (``--randomize-norm on``) the normalisation
statistics/affine parameters and every constant-valued parameter tensor are
therefore replaced by seeded random values of the same scale before export;
pass ``--randomize-norm off`` to export the raw initialisation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

# A wide, small-variant sample of timm families (conv nets, NAS nets, hybrids,
# vision transformers, MLP-mixers).
TIMM_SAMPLE: List[str] = [
    # ResNet family and relatives
    "resnet18", "resnet50d", "seresnext26d_32x4d", "resnext26ts", "wide_resnet50_2",
    "resnest14d", "res2net50_14w_8s", "skresnet18", "ecaresnet26t", "nf_resnet26",
    "botnet26t_256",
    # RegNet
    "regnetx_002", "regnety_004", "regnetz_b16",
    # EfficientNet / MobileNet / NAS-derived
    "efficientnet_b0", "efficientnet_lite0", "efficientnetv2_rw_t",
    "mobilenetv3_small_100", "mobilenetv3_large_100", "mobilenetv4_conv_small",
    "mnasnet_100", "ghostnet_100", "ghostnetv2_100", "hardcorenas_a", "mixnet_s",
    "lcnet_050",
    # dense / aggregation / dual-path / rank-expansion / HRNet
    "densenet121", "dla34", "dpn68", "rexnet_100", "hrnet_w18_small",
    # CSP / darknet / VoVNet / HGNet / GENet
    "cspresnet50", "cspdarknet53", "ese_vovnet19b_dw", "hgnetv2_b0", "gernet_s",
    # modern conv nets
    "convnext_atto", "convnextv2_atto", "edgenext_xx_small", "fastvit_t8",
    # classic
    "vgg11", "inception_v3", "inception_v4", "xception41",
    # selective-kernel-ish / SelecSLS / reparameterisable
    "selecsls42b", "repvgg_a0", "mobileone_s0",
    # hybrids and transformers
    "mobilevit_xxs", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224", "levit_128s", "efficientformer_l1",
    "efficientvit_b0", "tiny_vit_5m_224", "maxvit_nano_rw_256", "pit_ti_224",
    "xcit_nano_12_p16_224",
    # MLP-like / pooling token mixers
    "poolformer_s12", "mixer_s16_224",
]

SOURCES = ("torchvision", "timm")


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# model construction (used by both the planner and the worker)
# ---------------------------------------------------------------------------

def build_model(source: str, name: str):

    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    raise ValueError(f"unknown source {source!r}")


def default_input_size(source: str, name: str, model) -> Tuple[int, int, int]:
    """(C, H, W) the model is designed for."""
    if source == "timm":
        import timm.data

        cfg = timm.data.resolve_model_data_config(model)
        c, h, w = cfg["input_size"]
        return int(c), int(h), int(w)
    # torchvision: models with a hard-wired resolution expose it ...
    for attr in ("image_size", "input_size"):
        v = getattr(model, attr, None)
        if isinstance(v, int):
            return 3, v, v
        if isinstance(v, (tuple, list)) and len(v) == 2:
            return 3, int(v[0]), int(v[1])
    # ... the others take the evaluation crop of their default weights entry
    # (this only reads metadata; nothing is downloaded).
    try:
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT
        crop = getattr(weights.transforms(), "crop_size", None)
        if crop:
            h = crop[0]
            w = crop[1] if len(crop) > 1 else crop[0]
            return 3, int(h), int(w)
    except Exception:
        pass
    return 3, 224, 224


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def randomize_degenerate_params(model, seed: int = 0) -> None:
    """Give normalisation layers non-trivial statistics and break up
    constant-valued parameters (all-ones / all-zeros / all-equal, scalars
    included -- e.g. timm's LearnableAffineBlock scale=1/bias=0), so the
    exported graph looks like a trained model's (see module docstring)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)

    def unif(t, lo, hi):
        return torch.rand(t.shape, generator=g, dtype=torch.float32).to(t.dtype) * (hi - lo) + lo

    def normal(t, std):
        return torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.dtype) * std

    handled = set()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                if mod.running_mean is not None:
                    mod.running_mean.copy_(normal(mod.running_mean, 0.1))
                if mod.running_var is not None:
                    mod.running_var.copy_(unif(mod.running_var, 0.5, 1.5))
        for _pname, p in model.named_parameters():
            if id(p) in handled or not p.is_floating_point() or p.numel() == 0:
                continue
            handled.add(id(p))
            flat = p.detach().reshape(-1)
            if not bool((flat == flat[0]).all()):
                continue
            v = float(flat[0])
            if v == 0.0:
                p.copy_(normal(p, 0.02))
            else:
                p.copy_(p * unif(p, 0.5, 1.5))


# ---------------------------------------------------------------------------
# worker: export one model (runs in its own subprocess)
# ---------------------------------------------------------------------------

def _export_legacy(model, x, path: str, opset: int) -> None:
    import torch

    torch.onnx.export(
        model,
        (x,),
        path,
        dynamo=False,
        opset_version=opset,
        do_constant_folding=True,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )


def _export_dynamo(model, x, path: str, opset: int) -> None:
    import torch

    # a batch of 2 avoids torch.export's 0/1 specialisation of the batch dim
    x2 = torch.cat([x, x], 0)
    prog = torch.onnx.export(
        model,
        (x2,),
        None,
        dynamo=True,
        opset_version=opset,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
        external_data=False,
    )
    prog.save(path, external_data=False)


def _first_output(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return _first_output(out[0])
    if isinstance(out, dict):
        return _first_output(next(iter(out.values())))
    if hasattr(out, "logits"):
        return out.logits
    raise TypeError(f"cannot interpret model output of type {type(out).__name__}")


def worker(args) -> int:
    rec: Dict[str, Any] = {
        "source": args.source,
        "name": args.name,
        "file": f"{args.source}__{args.name}.onnx",
        "params": None,
        "input_shape": None,
        "status": "failed",
        "error": "",
        "export_seconds": None,
    }

    def dump():
        with open(args.result, "w") as f:
            json.dump(rec, f)

    try:
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        torch.manual_seed(0)
        model = build_model(args.source, args.name)
        model.eval()
        rec["params"] = count_params(model)
        c, h, w = default_input_size(args.source, args.name, model)
        rec["input_shape"] = ["batch", c, h, w]
        if rec["params"] > args.max_params:
            rec["status"] = "skipped"
            rec["error"] = f"{rec['params'] / 1e6:.1f} M params > --max-params {args.max_params / 1e6:.0f} M"
            dump()
            return 0
        if args.randomize_norm == "on":
            randomize_degenerate_params(model, seed=0)
        rec["norm_randomized"] = args.randomize_norm == "on"

        torch.manual_seed(0)
        x = torch.randn(1, c, h, w)
        path = os.path.join(args.out, rec["file"])
        tmp = path + ".tmp"
        errors = []
        t0 = time.time()
        exporter = None
        # NB: not under torch.no_grad(): with grad disabled, nn.MultiheadAttention
        # takes its fused fast path (aten::_native_multi_head_attention), which
        # the TorchScript exporter cannot translate.
        for kind, fn in (("torchscript", _export_legacy), ("dynamo", _export_dynamo)):
            if kind == "dynamo" and args.no_dynamo_retry:
                break
            try:
                if os.path.exists(tmp):
                    os.remove(tmp)
                fn(model, x, tmp, args.opset)
                exporter = kind
                break
            except Exception as e:  # noqa: BLE001
                print(f"--- {kind} export failed ---", file=sys.stderr)
                traceback.print_exc()
                errors.append(f"{kind}: {type(e).__name__}: {_one_line(e, 250)}")
        rec["export_seconds"] = round(time.time() - t0, 2)
        if exporter is None:
            rec["error"] = _one_line(" | ".join(errors), 600)
            dump()
            return 0
        rec["exporter"] = exporter
        if errors:
            rec["legacy_error"] = _one_line(errors[0], 400)
        os.replace(tmp, path)
        rec["file_bytes"] = os.path.getsize(path)

        import onnx

        try:
            onnx.checker.check_model(path, full_check=True)
        except Exception as e:  # noqa: BLE001
            rec["error"] = _one_line(f"onnx.checker: {type(e).__name__}: {e}")
            dump()
            return 0
        m = onnx.load(path, load_external_data=False)
        rec["opset"] = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
        rec["num_nodes"] = len(m.graph.node)
        rec["status"] = "ok"
        del m

        # optional numerical check at batch 2 (proves the batch axis is dynamic)
        try:
            import onnxruntime as ort  # noqa: F401
        except Exception:
            rec["ort_check"] = "not run (onnxruntime not installed)"
        else:
            try:
                import numpy as np

                x2 = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(1))
                with torch.no_grad():
                    ref = _first_output(model(x2)).float().numpy()
                so = ort.SessionOptions()
                so.intra_op_num_threads = max(1, os.cpu_count() or 1)
                sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
                got = sess.run(None, {sess.get_inputs()[0].name: x2.numpy()})[0]
                if got.shape != ref.shape:
                    rec["ort_check"] = f"shape mismatch: onnx {got.shape} vs torch {ref.shape}"
                else:
                    diff = float(np.abs(got.astype(np.float64) - ref).max())
                    scale = float(np.abs(ref).max()) or 1.0
                    rec["ort_max_abs_diff"] = diff
                    rec["ort_max_rel_diff"] = diff / scale
                    if diff / scale < 1e-3:
                        rec["ort_check"] = "ok"
                    else:
                        # Untrained deep nets can be so ill-conditioned that
                        # PyTorch's own fp32 result is far from the exact one;
                        # judge onnxruntime against a float64 reference and
                        # the size of PyTorch's own fp32 rounding noise.
                        import copy

                        m64 = copy.deepcopy(model).double()
                        with torch.no_grad():
                            ref64 = _first_output(m64(x2.double())).numpy()
                        del m64
                        s64 = float(np.abs(ref64).max()) or 1.0
                        noise = float(np.abs(ref - ref64).max()) / s64
                        ort64 = float(np.abs(got.astype(np.float64) - ref64).max()) / s64
                        rec["torch_fp32_rel_noise"] = noise
                        rec["ort_vs_fp64_rel_diff"] = ort64
                        if ort64 < 1e-3:
                            rec["ort_check"] = "ok"
                        elif noise >= 1e-3 and ort64 <= 3 * noise + 1e-3:
                            rec["ort_check"] = "ill-conditioned"
                        else:
                            rec["ort_check"] = "mismatch"
                rec["output_shape"] = ["batch"] + list(got.shape[1:])
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                rec["ort_check"] = _one_line(f"error: {type(e).__name__}: {e}", 300)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        rec["error"] = _one_line(f"{type(e).__name__}: {e}")
    dump()
    return 0


# ---------------------------------------------------------------------------
# planner / driver
# ---------------------------------------------------------------------------

def estimate_params(source: str, name: str) -> Optional[int]:
    """Parameter count without allocating weights (meta device); falls back
    to a real CPU instantiation for models whose __init__ can't run on meta."""
    import torch

    try:
        with torch.device("meta"):
            m = build_model(source, name)
        return count_params(m)
    except Exception:
        pass
    try:
        m = build_model(source, name)
        n = count_params(m)
        del m
        return n
    except Exception:
        return None


def plan(args) -> List[Tuple[str, str]]:
    wanted = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    sources = [args.only] if args.only else list(SOURCES)
    todo: List[Tuple[str, str]] = []
    unknown = set(wanted or [])
    if "torchvision" in sources:
        import torchvision

        tv = torchvision.models.list_models(module=torchvision.models)
        for n in tv:
            if wanted is None or n in wanted:
                todo.append(("torchvision", n))
                unknown.discard(n)
    if "timm" in sources:
        import timm

        if wanted is None:
            names = list(TIMM_SAMPLE)
        else:
            avail = set(timm.list_models())
            names = [n for n in wanted if n in avail]
        for n in names:
            todo.append(("timm", n))
            unknown.discard(n)
    if unknown:
        print(f"warning: unknown model name(s) for {sources}: {sorted(unknown)}", file=sys.stderr)
    return todo


def write_manifest(out: str, records: List[Dict[str, Any]]) -> None:
    path = os.path.join(out, "manifest.json")
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".manifest.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(records, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def driver(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    logdir = os.path.join(args.out, "logs")
    os.makedirs(logdir, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    todo = plan(args)
    if not todo:
        print("nothing to export", file=sys.stderr)
        return 1

    previous: Dict[Tuple[str, str], Dict[str, Any]] = {}
    mpath = os.path.join(args.out, "manifest.json")
    if os.path.exists(mpath):
        try:
            with open(mpath) as f:
                for r in json.load(f):
                    previous[(r["source"], r["name"])] = r
        except Exception:
            previous = {}

    # size estimate -> small models first, the largest last
    print(f"estimating parameter counts of {len(todo)} models ...", flush=True)
    est: Dict[Tuple[str, str], Optional[int]] = {}
    for key in todo:
        est[key] = estimate_params(*key)
    big = float("inf")
    todo.sort(key=lambda k: (est[k] if est[k] is not None else big, k))

    # records of models outside this run are kept in the manifest untouched
    records: Dict[Tuple[str, str], Dict[str, Any]] = dict(previous)
    worker_env = dict(os.environ)
    t_start = time.time()
    n = len(todo)
    for i, key in enumerate(todo, 1):
        source, name = key
        tag = f"[{i:3d}/{n}] {source}/{name}"
        prev = previous.get(key)
        if (
            args.resume
            and prev
            and prev.get("status") in ("ok", "skipped")
            and (prev.get("status") == "skipped" or os.path.exists(os.path.join(args.out, prev["file"])))
        ):
            print(f"{tag}: {prev['status']} (kept from previous run)", flush=True)
            continue
        p = est[key]
        if p is not None and p > args.max_params:
            rec = {
                "source": source, "name": name, "file": f"{source}__{name}.onnx",
                "params": p, "input_shape": None, "status": "skipped",
                "error": f"{p / 1e6:.1f} M params > --max-params {args.max_params / 1e6:.0f} M",
                "export_seconds": None,
            }
            stale = os.path.join(args.out, rec["file"])
            if os.path.exists(stale):
                os.remove(stale)
            records[key] = rec
            write_manifest(args.out, list(records.values()))
            print(f"{tag}: skipped ({rec['error']})", flush=True)
            continue

        fd, result = tempfile.mkstemp(prefix="export_result_", suffix=".json")
        os.close(fd)
        cmd = [
            sys.executable, os.path.abspath(__file__), "--_worker",
            "--source", source, "--name", name, "--out", args.out,
            "--opset", str(args.opset), "--max-params", str(args.max_params),
            "--randomize-norm", args.randomize_norm, "--_result", result,
        ]
        if args.no_dynamo_retry:
            cmd.append("--no-dynamo-retry")
        log = os.path.join(logdir, f"{source}__{name}.log")
        t0 = time.time()
        rec: Optional[Dict[str, Any]] = None
        with open(log, "w") as lf:
            try:
                proc = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT,
                                      timeout=args.timeout_per_model, env=worker_env)
                try:
                    with open(result) as f:
                        rec = json.load(f)
                except Exception:
                    rec = None
                if rec is None:
                    rec = {"status": "failed",
                           "error": f"worker exited with code {proc.returncode} without a result (see logs/{source}__{name}.log)"}
            except subprocess.TimeoutExpired:
                rec = {"status": "failed",
                       "error": f"timeout after {args.timeout_per_model}s"}
        try:
            os.remove(result)
        except OSError:
            pass
        base = {
            "source": source, "name": name, "file": f"{source}__{name}.onnx",
            "params": p, "input_shape": None, "status": "failed", "error": "",
            "export_seconds": None,
        }
        base.update(rec)
        rec = base
        rec["wall_seconds"] = round(time.time() - t0, 2)
        if rec["status"] != "ok":
            for stale in (os.path.join(args.out, rec["file"]), os.path.join(args.out, rec["file"]) + ".tmp"):
                if os.path.exists(stale):
                    os.remove(stale)
        records[key] = rec
        write_manifest(args.out, list(records.values()))

        params = rec.get("params")
        ps = f"{params / 1e6:.1f}M" if isinstance(params, int) else "?"
        extra = ""
        if rec["status"] == "ok":
            extra = f" via {rec.get('exporter')}, {rec.get('file_bytes', 0) / 2**20:.1f} MiB, ort: {rec.get('ort_check')}"
        elif rec.get("error"):
            extra = f" -- {rec['error'][:200]}"
        print(f"{tag}: {rec['status']} {ps} params, in {rec['input_shape']}, "
              f"{rec['wall_seconds']:.1f}s{extra}", flush=True)

    recs = [records[k] for k in todo if k in records]
    summary = {}
    for r in recs:
        s = summary.setdefault(r["source"], {"ok": 0, "failed": 0, "skipped": 0})
        s[r["status"]] = s.get(r["status"], 0) + 1
    print(f"done in {time.time() - t_start:.0f}s: {json.dumps(summary)}; manifest: {mpath}", flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (e.g. /work/archs)")
    ap.add_argument("--only", choices=SOURCES, help="export only this source")
    ap.add_argument("--names", default="", help="comma-separated model names (default: all torchvision "
                    "classification models + the built-in timm sample)")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--timeout-per-model", type=float, default=900.0, help="seconds (default 900)")
    ap.add_argument("--max-params", type=int, default=150_000_000,
                    help="skip models with more parameters than this (default 150e6, ~600 MB fp32)")
    ap.add_argument("--randomize-norm", choices=("on", "off"), default="on",
                    help="randomise degenerate normalisation stats/constant params before export (default on)")
    ap.add_argument("--no-dynamo-retry", action="store_true", help="do not retry failures with the dynamo exporter")
    ap.add_argument("--resume", action="store_true", help="keep models already exported ok in OUT/manifest.json")
    ap.add_argument("--list", action="store_true", help="print the planned (source, name) list and exit")
    # internal: single-model worker mode
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--source", choices=SOURCES, help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--_result", dest="result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        return worker(args)
    if args.list:
        for s, n in plan(args):
            print(f"{s}\t{n}")
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
