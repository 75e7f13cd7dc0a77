"""Bad inputs and faults, tried as a new user would: what each one does to a checkout.

    python benchmarks/bad_inputs.py --tree . --out benchmarks/results/cpu/bad-inputs.json
    python benchmarks/bad_inputs.py --tree /path/to/older/checkout --out old.json

Each case runs in a fresh Python process with ``PYTHONPATH=<tree>`` (so an older checkout
of ann2snn can be compared with this one) and is classified as

* ``error``     – it failed; for the Python API the exception's last line is kept (read it:
  does it name the argument and what is allowed?), for the CLI its error line,
* ``traceback`` – the CLI failed with a raw Python traceback,
* ``no error``  – it ran and exited 0 (``silent`` when the case is one that must fail).

A small CNN is trained for one epoch on 600 images of the Fashion-MNIST in ``--data-dir``
(default: the Debian package folder) to have a run folder. Never imported by the package.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

PY_SETUP = """
import json, math, torch, torch.nn as nn, torch.nn.functional as F, ann2snn
torch.manual_seed(0)
def net(bn=None):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), bn or nn.BatchNorm2d(4),
                         ann2snn.QCFS(4, 1.0), nn.Flatten(), nn.Linear(64, 3)).eval()
x = torch.randn(2, 1, 4, 4)
def rehash(path, edit):  # what anyone can do to a record: edit it, then recompute its hash
    import ann2snn.checkpoint as ck
    rec = json.load(open(path)); edit(rec); rec['record_sha256'] = ck.record_digest(rec)
    json.dump(rec, open(path, 'w'))
def nir_file(path, edit=None):  # a valid NIR file of a small SNN, optionally edited
    import nir
    ann2snn.export_nir(ann2snn.convert(net()), path, x)
    if edit:
        g = nir.read(path); edit(g, nir); nir.write(path, g)
    return path
def voc(root, name, box):  # VOC2007 with one training and one test image
    import pathlib, numpy as np
    from PIL import Image
    base = pathlib.Path(root) / 'VOCdevkit' / 'VOC2007'
    for d in ('JPEGImages', 'Annotations', 'ImageSets/Main'): (base / d).mkdir(parents=True, exist_ok=True)
    for stem in ('a', 'b'):
        Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(base / 'JPEGImages' / f'{stem}.jpg')
        xml = ('<annotation><size><width>100</width><height>50</height></size><object><name>'
               + name + '</name><difficult>0</difficult><bndbox>'
               + ''.join(f'<{k}>{v}</{k}>' for k, v in zip(('xmin', 'ymin', 'xmax', 'ymax'), box))
               + '</bndbox></object></annotation>')
        (base / 'Annotations' / f'{stem}.xml').write_text(xml)
    (base / 'ImageSets/Main/trainval.txt').write_text('a\\n'); (base / 'ImageSets/Main/test.txt').write_text('b\\n')
    return root
"""

# (case, kind, code or CLI args); kind "py" runs code after PY_SETUP, "cli" runs the CLI.
CASES: list[tuple[str, str, str | list[str]]] = [
    ("edited record: model_kwargs.levels 4 → 8 in best.json", "py", """
        rec = json.load(open(RUN + '/best.json')); rec['model_kwargs']['levels'] = 8
        json.dump(rec, open(RUN + '/best.json', 'w'))
        m = ann2snn.load(RUN); print('loaded, levels', [q.levels for q in m.modules() if hasattr(q, 'levels')][:1])
    """),
    ("record field of the wrong type (model_kwargs = [4])", "py", """
        rec = json.load(open(RUN2 + '/best.json')); rec['model_kwargs'] = [4]
        json.dump(rec, open(RUN2 + '/best.json', 'w')); ann2snn.load(RUN2)
    """),
    ("data-dependent control flow: check / convert", "py", """
        class Gate(nn.Module):
            def forward(self, x):
                return F.relu(x) if x.sum() > 0 else x
        m = nn.Sequential(nn.Linear(3, 3), Gate(), nn.Linear(3, 2))
        r = ann2snn.check(m); print('check ok:', r.ok)
        snn = ann2snn.convert(m, calibration=torch.randn(8, 3)); print('neurons:', len(snn.layers))
    """),
    ("NaN input to simulate", "py", """
        snn = ann2snn.convert(net()); xx = x.clone(); xx[0, 0, 0, 0] = float('nan')
        r = ann2snn.simulate(snn, (xx, torch.zeros(2, dtype=torch.long)), 2, progress=False)
        print('accuracy', r.accuracy)
    """),
    ("simulate(snn, [], T=4)", "py", """
        r = ann2snn.simulate(ann2snn.convert(net()), [], 4, progress=False); print('accuracy', r.accuracy)
    """),
    ("run() on an SNN in train mode (BatchNorm statistics)", "py", """
        snn = ann2snn.convert(net()).train()
        bn = [m for m in snn.modules() if isinstance(m, nn.BatchNorm2d)][0]; before = bn.running_mean.clone()
        ann2snn.run(snn, x * 3 + 1, 2)
        assert torch.equal(before, bn.running_mean), 'BatchNorm statistics were updated'
        print('unchanged')
    """),
    ("v_init = nan", "py", "ann2snn.convert(net(), v_init=float('nan')); print('accepted')"),
    ("tau = 0", "py", "s = ann2snn.convert(net(), 'gn', tau=0); print('accepted, tau', s.body.get_submodule(s.layers[0]).tau)"),
    ("BatchNorm with track_running_stats=False", "py", """
        ann2snn.convert(net(nn.BatchNorm2d(4, track_running_stats=False))); print('converted')
    """),
    ("float T (run(..., T=2.5))", "py", "ann2snn.run(ann2snn.convert(net()), x, 2.5); print('ran')"),
    ("string T (run(..., T='4'))", "py", "ann2snn.run(ann2snn.convert(net()), x, '4'); print('ran')"),
    ("image of the wrong size (5×5 for a 4×4 network)", "py", "ann2snn.run(ann2snn.convert(net()), torch.randn(2, 1, 5, 5), 4)"),
    ("a network with no activation", "py", "s = ann2snn.convert(nn.Sequential(nn.Linear(3, 2))); print('neurons:', len(s.layers))"),
    ("eval --limit-test 0", "cli", ["eval", "RUN", "--data-dir", "DATA", "--limit-test", "0", "--T", "1"]),
    ("eval --T-max -1", "cli", ["eval", "RUN", "--data-dir", "DATA", "--T-max", "-1"]),
    ("eval --batch-size 0", "cli", ["eval", "RUN", "--data-dir", "DATA", "--batch-size", "0"]),
    ("eval --device cuda on a machine without CUDA", "cli", ["eval", "RUN", "--data-dir", "DATA", "--device", "cuda", "--T", "1"]),
    ("unreadable CIFAR pickle", "py", """
        import pathlib; d = pathlib.Path(TMP) / 'c10' / 'cifar-10-batches-py'; d.mkdir(parents=True)
        for n in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']: (d / n).write_bytes(b'junk')
        ann2snn.create_loaders('cifar10', data_dir=d.parent)
    """),
    ("--data-dir without the data, $ANN2SNN_DATA holds a copy", "cli", ["train", "--model", "cnn", "--dataset", "fashion-mnist", "--data-dir", "TMP/empty", "--epochs", "1", "--limit-train", "100", "--out", "TMP/fallback", "--no-progress", "--device", "cpu"]),
    ("missing CIFAR: the message's advice", "cli", ["train", "--model", "cnn", "--dataset", "cifar10", "--data-dir", "TMP/empty", "--out", "TMP/c", "--no-progress"]),
    # --- files from strangers, interrupts and disks (the safety issue) ---
    ("record names code: model = 'evil_payload:build'", "py", """
        open(TMP + '/evil_payload.py', 'w').write("print('PAYLOAD RAN')\\ndef build(**kw):\\n    raise SystemExit(0)")
        rehash(RUN3 + '/best.json', lambda r: r.update(model='evil_payload:build'))
        ann2snn.load(RUN3); print('loaded')
    """),
    ("CIFAR batch whose pickle runs code", "py", """
        import pathlib, pickle, numpy as np
        class P:
            def __reduce__(self): return (print, ('PAYLOAD RAN',))
        d = pathlib.Path(TMP) / 'evil' / 'cifar-10-batches-py'; d.mkdir(parents=True)
        b = {b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 1], b'x': P()}
        for n in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']: (d / n).write_bytes(pickle.dumps(b))
        ann2snn.create_loaders('cifar10', data_dir=d.parent, device='cpu'); print('loaded')
    """),
    ("record edited with its record_sha256 deleted", "py", """
        rec = json.load(open(RUN4 + '/best.json')); rec['model_kwargs']['levels'] = 8; del rec['record_sha256']
        json.dump(rec, open(RUN4 + '/best.json', 'w')); ann2snn.load(RUN4); print('loaded, levels 8')
    """),
    ("NIR import: a NaN weight", "py", """
        def nan(g, nir):
            k = next(k for k, n in g.nodes.items() if isinstance(n, nir.Conv2d)); g.nodes[k].weight[...] = float('nan')
        s = ann2snn.import_nir(nir_file(TMP + '/nan.nir', nan)); print('imported', s(x.unsqueeze(0)).isfinite().all().item())
    """),
    ("NIR import: per-neuron v_threshold", "py", """
        def per(g, nir):
            k = next(k for k, n in g.nodes.items() if isinstance(n, nir.IF)); g.nodes[k].v_threshold[0] *= 3
        ann2snn.import_nir(nir_file(TMP + '/per.nir', per)); print('imported')
    """),
    ("NIR import: an orphan node", "py", """
        def orphan(g, nir):
            g.nodes['lonely'] = nir.Scale(np.ones(3, np.float32)); g.edges.append(('lonely', 'output'))
        import numpy as np; ann2snn.import_nir(nir_file(TMP + '/orphan.nir', orphan)); print('imported')
    """),
    ("NIR import: a 2,000-node chain", "py", """
        import nir, numpy as np
        n = 2000; nodes = {f's{i}': nir.Scale(np.ones(3, np.float32)) for i in range(n)}
        nodes |= {'input': nir.Input({'input': np.array([3])}), 'output': nir.Output({'output': np.array([3])})}
        edges = [('input', 's0')] + [(f's{i}', f's{i+1}') for i in range(n - 1)] + [(f's{n-1}', 'output')]
        nir.write(TMP + '/chain.nir', nir.NIRGraph(nodes=nodes, edges=edges)); ann2snn.import_nir(TMP + '/chain.nir'); print('imported')
    """),
    ("NIR import: an empty file", "py", "open(TMP + '/empty.nir', 'w').close(); ann2snn.import_nir(TMP + '/empty.nir')"),
    ("VOC: a NaN box", "py", "L = ann2snn.create_loaders('voc', data_dir=voc(TMP + '/v1', 'car', ('nan', 1, 20, 20)), device='cpu'); next(iter(L.train)); print('loaded')"),
    ("VOC: an unknown class", "py", "ann2snn.create_loaders('voc', data_dir=voc(TMP + '/v2', 'spaceship', (1, 1, 20, 20)), device='cpu'); print('loaded')"),
    ("calibrate on NaN images", "py", """
        s = ann2snn.calibrate(ann2snn.convert(net()), torch.full((2, 1, 4, 4), float('nan')), T=2); print('calibrated')
    """),
    ("a garbage .lock in the run folder", "cli", ["train", "--model", "cnn", "--dataset", "fashion-mnist", "--data-dir", "DATA", "--epochs", "1", "--out", "TMP/locked", "--no-progress"]),
    ("a model with two inputs: check, then run", "py", """
        class Two(nn.Module):
            def __init__(self): super().__init__(); self.a, self.b, self.q = nn.Linear(4, 3), nn.Linear(4, 3), ann2snn.QCFS(4, 1.0)
            def forward(self, u, v): return self.q(self.a(u) + self.b(v))
        print('check ok:', ann2snn.check(Two()).ok); s = ann2snn.convert(Two()); ann2snn.run(s, (torch.ones(2, 4), torch.ones(2, 4)), 2)
    """),
    ("export --format nir --T 8 (T means nothing to NIR)", "cli", ["export", "RUN5", "--format", "nir", "--T", "8", "--out", "TMP/t.nir"]),
    ("export --out RUN/best.safetensors (the run's own weights)", "cli", ["export", "RUN5", "--format", "nir", "--out", "RUN5/best.safetensors"]),
]  # fmt: skip
MUST_FAIL = {c for c, *_ in CASES} - {"run() on an SNN in train mode (BatchNorm statistics)",
                                     "NIR import: a 2,000-node chain"}  # fmt: skip


def _run(tree: Path, kind: str, body, env: dict[str, str], tmp: Path) -> dict:
    if kind == "py":
        runs = {k: env[k] for k in ("RUN", "RUN2", "RUN3", "RUN4", "RUN5")}
        code = (
            PY_SETUP + "".join(f"{k} = {v!r}\n" for k, v in runs.items()) + f"TMP = {str(tmp)!r}\n"
        )
        code += textwrap.dedent(body).strip()
        cmd = [sys.executable, "-c", code]
    else:
        args = [a.replace("RUN5", env["RUN5"]).replace("RUN", env["RUN"]).replace("DATA", env["DATA"])
                .replace("TMP", str(tmp)) for a in body]  # fmt: skip
        cmd = [sys.executable, "-m", "ann2snn.cli", *args]
    # cwd: a folder without ann2snn in it, so that PYTHONPATH decides which checkout runs.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp,
                          env={**os.environ, "PYTHONPATH": str(tree),
                               "ANN2SNN_DATA": env["DATA"]})  # fmt: skip
    err = proc.stderr.strip().replace(str(tmp), "<tmp>")
    if proc.returncode == 0:
        out = proc.stdout.strip().replace(str(tmp), "<tmp>").splitlines()
        return {"outcome": "no error", "detail": out[-1] if out else ""}
    lines = err.splitlines() or [""]
    if kind == "py":
        return {"outcome": "error", "detail": lines[-1][:220]}
    if "Traceback (most recent call last)" in err:
        return {"outcome": "traceback", "detail": lines[-1][:220]}
    first = next((li for li in lines if "error" in li.lower()), lines[0])
    return {"outcome": "error", "detail": first[:220]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", default=".", help="checkout of ann2snn to try (its root folder)")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--cases", help="only cases whose name contains one of these (comma-separated)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    wanted = [c.strip() for c in (args.cases or "").split(",") if c.strip()]
    cases = [c for c in CASES if not wanted or any(w in c[0] for w in wanted)]
    tree = Path(args.tree).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="ann2snn-bad-inputs-"))
    (tmp / "empty").mkdir()
    env = {"DATA": args.data_dir} | {f"RUN{i}": str(tmp / f"run{i}") for i in ("", 2, 3, 4, 5)}
    (tmp / "locked").mkdir()
    (tmp / "locked" / ".lock").write_text("")  # a lock file that names no holder
    train = [sys.executable, "-m", "ann2snn.cli", "train", "--model", "cnn", "--dataset",
             "fashion-mnist", "--data-dir", args.data_dir, "--epochs", "1", "--limit-train",
             "600", "--limit-test", "200", "--no-progress", "--device", "cpu", "--out"]  # fmt: skip
    subprocess.run([*train, env["RUN"]], check=True, capture_output=True, timeout=600,
                   env={**os.environ, "PYTHONPATH": str(tree)})  # fmt: skip
    for i in (2, 3, 4, 5):  # copies: cases that edit or damage a run get their own
        shutil.copytree(env["RUN"], env[f"RUN{i}"])
    rows = []
    try:
        print("| case | outcome | message |\n|---|---|---|")
        for case, kind, body in cases:
            r = _run(tree, kind, body, env, tmp)
            if r["outcome"] == "no error" and case in MUST_FAIL:
                r["outcome"] = "silent"
            rows.append({"case": case, **r})
            print(f"| {case} | {r['outcome']} | {r['detail'].replace('|', '/')} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        # The checkout is named by its commit, not by where it lies on this machine.
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or "unknown"  # fmt: skip
        argv_shown = ["<checkout>" if a == args.tree else a for a in sys.argv]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": "python " + shlex.join(argv_shown),
                                              "commit": commit, "rows": rows}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
