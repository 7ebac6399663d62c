"""The Ray engine on a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, one
module-scoped cluster and engine: Ray starts slowly on two shared cores):

* explain and evaluate on Ray write byte-identical maps and identical metric values to the
  in-process engine, on a run folder every node sees (the shared-filesystem case);
* a worker killed part-way is restarted, its unit retried, and the run completes identically;
* a driver killed part-way (SIGKILL) loses nothing: the re-run computes only what was not marked
  done and ends byte-identical.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray")  # the optional extra: pip install concilium[ray]

from ray.cluster_utils import Cluster  # noqa: E402

from concilium.data.dataset import ImageDataset  # noqa: E402
from concilium.data.folder import write_folder  # noqa: E402
from concilium.data.specs import FolderDataset  # noqa: E402
from concilium.jobs.engines import ENGINES, make_engine  # noqa: E402
from concilium.jobs.evaluate import evaluate_run  # noqa: E402
from concilium.jobs.explain import ExplainOptions, explain_run  # noqa: E402
from concilium.store import ExplanationStore, read_metrics  # noqa: E402
from tiny_members import chunk_files, save_small_cnn_members  # noqa: E402

pytestmark = pytest.mark.slow

N, HW = 8, 16
OPTIONS = ExplainOptions(methods=["saliency", "input_x_gradient", "gradient_shap"], split="all",
                         chunk_size=2, batch_size=4, seed=3)
METRICS = ["relevance_mass", "faithfulness_correlation"]  # mask only; model-bound, stochastic
PARAMS = {"faithfulness_correlation": {"nr_runs": 3, "subset_size": 16}}


@pytest.fixture(scope="module")
def cluster():
    # two logical CPUs a node: the module's engine holds two workers, a second driver two more
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    c.add_node(num_cpus=2)
    ray.init(address=c.address, include_dashboard=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def engine(cluster):
    """One engine for the module: its two workers start once (seconds each on a busy machine)
    and serve every job."""
    engine = make_engine("ray", workers=2)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[FolderDataset, Path]:
    root = tmp_path_factory.mktemp("ray")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(N, 3, HW, HW, generator=g)
    data = ImageDataset(images=(images * 255).round() / 255, labels=torch.arange(N) % 2,
                        masks=torch.rand(N, HW, HW, generator=g) > 0.5,
                        ids=[f"s{i}" for i in range(N)], splits=["test"] * N,
                        class_names=["a", "b"])
    write_folder(data, root / "data")
    save_small_cnn_members(data, root / "models")
    return FolderDataset(path=str((root / "data").resolve())), root / "models"


def metric_values(run: Path) -> pd.DataFrame:
    table = read_metrics(run)
    keys = ["source", "method", "metric", "sample"]
    return table.sort_values(keys, ignore_index=True)[[*keys, "value", "params_hash"]]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    """The in-process run: explained, then evaluated in chunks of 3 rows."""
    dataset, models = inputs
    run = tmp_path_factory.mktemp("inprocess") / "run"
    explain_run(run, dataset=dataset, models=models, options=OPTIONS)
    evaluate_run(run, METRICS, params=PARAMS, split="all", chunk=3, seed=1)
    return run


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc: the cluster's raylets and their workers
    are children of this test process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _worker_pids() -> list[int]:
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::_Worker"):
            pids.append(pid)
    return pids


@pytest.mark.parametrize("name", ENGINES.names())
def test_every_engine_writes_the_in_process_bytes_and_values(name, engine, inputs, reference,
                                                             tmp_path):
    """Ray: two workers on two nodes; in-process: the evaluate units of a second run."""
    dataset, models = inputs
    engine = engine if name == "ray" else make_engine(name)
    run = tmp_path / "run"  # the same folder for every node: a shared filesystem
    events = []
    reports = explain_run(run, dataset=dataset, models=models, options=OPTIONS,
                          engine=engine, on_chunk=events.append)
    assert chunk_files(run) == chunk_files(reference)
    assert all(r.status == "computed" for r in reports)
    assert events[-1].images_done == events[-1].images_total == 2 * 3 * N  # one progress feed
    report = evaluate_run(run, METRICS, params=PARAMS, split="all", chunk=3, seed=1,
                          engine=engine)
    assert len(report.computed) == 2 * 3 * 2
    ours, theirs = metric_values(run), metric_values(reference)
    assert len(ours) == 2 * 3 * 2 * N
    pd.testing.assert_frame_equal(ours, theirs)


def test_a_worker_killed_mid_run_is_retried_and_the_run_completes(engine, inputs, reference,
                                                                   tmp_path):
    dataset, models = inputs
    run = tmp_path / "run"
    killed = []

    def kill_one_worker(event) -> None:
        if not killed:
            pids = _worker_pids()
            assert pids, "no Ray worker process found to kill"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    reports = explain_run(run, dataset=dataset, models=models, options=OPTIONS,
                          engine=engine, on_chunk=kill_one_worker)
    assert killed
    assert ExplanationStore(run).entries().complete.all()
    assert sum(r.chunks_computed for r in reports) == 2 * 3 * N // 2
    assert chunk_files(run) == chunk_files(reference)


DRIVER = textwrap.dedent("""
    import sys, time
    import ray
    from concilium.data.specs import FolderDataset
    from concilium.jobs.engines import make_engine
    from concilium.jobs.explain import ExplainOptions, explain_run
    ray.init(address=sys.argv[1])
    explain_run(sys.argv[2], dataset=FolderDataset(path=sys.argv[3]), models=sys.argv[4],
                options=ExplainOptions.model_validate_json(sys.argv[5]),
                engine=make_engine("ray", workers=2),
                on_chunk=lambda event: time.sleep(0.5))  # a slow driver, to be killed part-way
""")


def test_a_driver_killed_mid_run_resumes_without_loss_or_recompute(cluster, engine, inputs,
                                                                    reference, tmp_path):
    dataset, models = inputs
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, cluster.address, str(run), dataset.path, str(models),
         OPTIONS.model_dump_json()], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_before = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
        try:
            done_before = int(ExplanationStore(run, mode="r").entries().chunks_done.sum())
        except (FileNotFoundError, ValueError, KeyError):
            continue
        if done_before >= 3:
            break
    driver.kill()  # SIGKILL: nothing of the driver runs after this
    driver.wait()
    assert done_before >= 3, driver.stderr.read().decode()[-2000:]
    done_at_kill = int(ExplanationStore(run, mode="r").entries().chunks_done.sum())
    assert done_at_kill < 2 * 3 * N // 2, "the driver finished before it was killed"
    reports = explain_run(run, dataset=dataset, models=models, options=OPTIONS,
                          engine=engine)
    assert sum(r.chunks_reused for r in reports) == done_at_kill  # nothing done is recomputed
    assert sum(r.chunks_computed for r in reports) == 2 * 3 * N // 2 - done_at_kill
    assert chunk_files(run) == chunk_files(reference)  # nothing lost
