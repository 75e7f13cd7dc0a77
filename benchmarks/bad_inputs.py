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
]  # fmt: skip
MUST_FAIL = {c for c, *_ in CASES} - {"run() on an SNN in train mode (BatchNorm statistics)"}


def _run(tree: Path, kind: str, body, env: dict[str, str], tmp: Path) -> dict:
    if kind == "py":
        code = PY_SETUP + f"RUN, RUN2, TMP = {env['RUN']!r}, {env['RUN2']!r}, {str(tmp)!r}\n"
        code += textwrap.dedent(body).strip()
        cmd = [sys.executable, "-c", code]
    else:
        args = [a.replace("RUN", env["RUN"]).replace("DATA", env["DATA"]).replace("TMP", str(tmp))
                for a in body]  # fmt: skip
        cmd = [sys.executable, "-m", "ann2snn.cli", *args]
    # cwd: a folder without ann2snn in it, so that PYTHONPATH decides which checkout runs.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp,
                          env={**os.environ, "PYTHONPATH": str(tree),
                               "ANN2SNN_DATA": env["DATA"]})  # fmt: skip
    err = proc.stderr.strip().replace(str(tmp), "<tmp>")
    if proc.returncode == 0:
        out = proc.stdout.strip().splitlines()
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
    env = {"DATA": args.data_dir, "RUN": str(tmp / "run"), "RUN2": str(tmp / "run2")}
    train = [sys.executable, "-m", "ann2snn.cli", "train", "--model", "cnn", "--dataset",
             "fashion-mnist", "--data-dir", args.data_dir, "--epochs", "1", "--limit-train",
             "600", "--limit-test", "200", "--no-progress", "--device", "cpu", "--out"]  # fmt: skip
    for run in (env["RUN"], env["RUN2"]):
        subprocess.run([*train, run], check=True, capture_output=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(tree)})  # fmt: skip
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
