"""Long jobs unattended: ``concilium explain`` with its stderr in a log writes plain progress
lines; Ctrl-C (a real SIGINT to the CLI process) stops it with status 130, keeps every finished
chunk, marks nothing half-written, and the same command then resumes to the maps of an
uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from concilium.data.dataset import ImageDataset
from concilium.data.folder import write_folder
from concilium.data.specs import FolderDataset
from concilium.jobs.explain import ExplainOptions, explain_run
from concilium.models.architectures import create_model
from concilium.models.members import MemberCard, save_member
from concilium.store import ExplanationStore

N, HW = 32, 32
FLAGS = ["--methods", "integrated_gradients", "--chunk-size", "2", "--batch-size", "4",
         "--split", "all", "--param", "integrated_gradients.n_steps=10"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("interrupt")
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(
        images=(torch.rand(N, 3, HW, HW, generator=g) * 255).round() / 255,
        labels=torch.arange(N) % 2, masks=torch.rand(N, HW, HW, generator=g) > 0.5,
        ids=[f"s{i:02d}" for i in range(N)], splits=["test"] * N, class_names=["a", "b"],
    )
    write_folder(data, root / "data")
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = create_model("small-cnn", num_classes=2)
    card = MemberCard(member_id="m0", arch="small-cnn", num_classes=2, class_names=["a", "b"],
                      image_size=(HW, HW), seed=3, diversity="seed", epochs=0,
                      gradcam_layer=model.gradcam_layer, data_fingerprint=data.fingerprint())
    save_member(model.eval(), card, root / "models" / "m0")
    return root / "data", root / "models"


def _marks(run: Path) -> int:
    try:
        entry = ExplanationStore(run, mode="r").get("m0", "integrated_gradients")
    except (ValueError, FileNotFoundError, KeyError):
        return 0
    return int(entry.done_chunks().sum())


@pytest.mark.slow
def test_ctrl_c_keeps_finished_chunks_exits_130_and_resumes(setup, tmp_path):
    data, models = setup
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "COLUMNS": "200"}
    log = (tmp_path / "explain.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "concilium.cli.main", "explain", str(data), "--models",
         str(models), "--out", str(run), *FLAGS],
        stdout=log, stderr=subprocess.STDOUT, env=env,  # as `> explain.log 2>&1`
    )
    deadline = time.monotonic() + 240
    while _marks(run) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before it could be interrupted; give it more work"
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=120)
    log.close()
    text = (tmp_path / "explain.log").read_text()
    assert code == 130, text
    assert "interrupted" in text and "Traceback" not in text, text
    # the log shows plain progress lines, not a terminal bar
    assert "explaining: started" in text, text
    assert re.search(r"\] m0 \(integrated_gradients\): 2/32 images \(6%\), [\d.]+ images/s, "
                     r"ETA \d+", text), text

    entry = ExplanationStore(run).get("m0", "integrated_gradients")
    kept = int(entry.done_chunks().sum())
    assert 2 <= kept < entry.n_chunks
    assert entry.verify() == []  # every chunk marked done holds exactly its maps

    options = ExplainOptions(methods=["integrated_gradients"], chunk_size=2, batch_size=4,
                             split="all", params={"integrated_gradients": {"n_steps": 10}})
    spec = FolderDataset(path=str(data.resolve()))
    (report,) = explain_run(run, dataset=spec, models=models, options=options)
    assert report.chunks_reused == kept and report.chunks_repaired == 0
    (clean,) = explain_run(tmp_path / "clean", dataset=spec, models=models, options=options)
    a = ExplanationStore(run).get("m0", "integrated_gradients").read()
    b = ExplanationStore(tmp_path / "clean").get("m0", "integrated_gradients").read()
    assert np.array_equal(a.numpy(), b.numpy())
