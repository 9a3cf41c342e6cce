"""``python -m harness demo``: generation as one Hydra multirun on the joblib launcher (two workers), then one
scoring pass and the tables, on the tiny testbed."""

import json

import pytest

from harness import demo
from harness.store import iter_images


@pytest.mark.slow
def test_demo_generates_every_method_in_parallel_jobs_and_builds_the_tables(tmp_path, capsys):
    output = tmp_path / "demo"
    code = demo.main(["--testbed", "tiny", "--methods", "composite", "merge", "--sets-per-n", "2", "--batch-size",
                      "3", "--jobs", "2", f"output_dir={output}"])
    assert code == 0
    images = list(iter_images(output))
    assert sorted({image.method_label for image in images}) == ["composite", "merge"]
    assert len(images) == 2 * 4  # two sets per N, N = 2 and 3, one seed
    assert {image.metadata["batch"]["size"] for image in images} <= {1, 2, 3}
    assert max(image.metadata["batch"]["size"] for image in images) == 3
    multirun = next((output / "logs").glob("multirun_*"))
    assert len([job for job in multirun.iterdir() if job.is_dir()]) == 2  # one Hydra job per method
    assert "demo: 2 methods on tiny" in capsys.readouterr().out
    assert json.loads((output / "testbed.json").read_text())["name"] == "tiny"


def test_demo_stops_after_a_generation_that_made_nothing(tmp_path, capsys):
    code = demo.main(["--testbed", "tiny", "--methods", "no_such_method", "--sets-per-n", "1",
                      f"output_dir={tmp_path / 'demo'}"])
    assert code != 0
    assert "made no image: nothing to score" in capsys.readouterr().out
