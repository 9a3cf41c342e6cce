"""Batching across images: a batch of images (any sets and seeds, one method) gives every image what a batch of
one gives it, and the runner's batches keep resume, sharding and per-image failures as they were."""

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from tqdm import tqdm

from engine_support import make_runner, tiny_testbed
from harness.io import read_json
from harness.lora import LoraSpec
from harness.methods import METHODS, ImageContext
from harness.runner import RunSummary, image_seed, select_sets
from harness.sampler import ImageJob, NonFiniteError
from harness.settings import ConfigError, RunSettings
from harness.store import iter_images


def run_all(runner, sets, seeds=(0,)) -> RunSummary:
    summary = RunSummary()
    with tqdm(disable=True) as progress:
        runner.run_sets(sets, list(seeds), summary, progress)
    return summary


@pytest.fixture(scope="module")
def batch_world(tiny_testbed_dir):
    """The tiny testbed's pipeline with every LoRA loaded, and 6 images: 5 sets of N = 2 and 3 (seed 0) plus a
    second seed of the first set (two images of one batch with the same adapters)."""
    testbed = tiny_testbed(tiny_testbed_dir)
    sets = select_sets(testbed.sets(), limit_per_n=3)[:5]
    runner = make_runner(testbed, tiny_testbed_dir / "unused")
    sampler = runner.sampler()
    runner._adapters.ensure([lora for composition in sets for lora in composition.loras])
    images = [(composition, 0) for composition in sets] + [(sets[0], 1)]
    return testbed, runner, sampler, images


def jobs_for(name, testbed, runner, sampler, images, **settings):
    return [ImageJob(METHODS.get(name)(**settings),
                     ImageContext(list(composition.loras), runner.lora_scale, testbed.prompt_for(composition),
                                  runner.settings.steps, sampler.embed_without_loras, sampler.lora_deltas),
                     image_seed(seed, composition.id)) for composition, seed in images]


@pytest.mark.parametrize("name", METHODS.names())
def test_a_batch_gives_every_method_the_latents_of_batch_one(batch_world, name):
    """Final latents within 1e-4 of batch one's, relative to their scale where they exceed 1: the tiny model's
    random weights drive latents to +-35, where float32 rounding alone is ~4e-6 per unit (on the toy's O(1)
    latents the same bound is absolute: docs/results.md, "Batching across images")."""
    testbed, runner, sampler, images = batch_world
    alone = [sampler.denoise_batch([job], testbed.negative_prompt, runner.settings)[0]
             for job in jobs_for(name, testbed, runner, sampler, images)]
    together = sampler.denoise_batch(jobs_for(name, testbed, runner, sampler, images), testbed.negative_prompt,
                                     runner.settings)
    assert sampler.batched_failed is None
    for single, batched in zip(alone, together):
        assert single.error is None and batched.error is None
        assert (single.latents - batched.latents).abs().max() <= 1e-4 * max(1.0, single.latents.abs().max())
        assert single.evaluations == batched.evaluations
        timing = {"merge_seconds"}  # a peft merge's build time, noted by the image that built it
        assert ({k: v for k, v in single.plan.describe().items() if k not in timing}
                == {k: v for k, v in batched.plan.describe().items() if k not in timing})
    # the images differ from each other (sets and seeds), so equality above is not a constant
    assert (together[0].latents - together[-1].latents).abs().max() > 1e-3


def test_loratorio_weight_maps_stay_per_image(batch_world):
    """Methods keep per-image state between prepare and combine: each image of a batch has its own instance."""
    testbed, runner, sampler, images = batch_world
    jobs = jobs_for("loratorio", testbed, runner, sampler, images[:3])
    sampler.denoise_batch(jobs, testbed.negative_prompt, runner.settings)
    for job, (composition, _) in zip(jobs, images):
        assert len(job.method.weight_maps) == runner.settings.steps
        assert job.method.weight_maps[0].shape[0] == composition.n


def test_several_adapter_rows_equal_the_adapters_set_together(batch_world):
    """Merge in a batch: rows whose pass runs several adapters get their sum from stacked A/B matrices, the
    same prediction as with the adapters set on the UNet."""
    testbed, runner, sampler, images = batch_world
    (first, _), (second, _) = images[0], images[3]
    jobs = jobs_for("merge", testbed, runner, sampler, [(first, 0), (second, 0)])
    plans = [job.method.prepare(job.context) for job in jobs]
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    texts = [torch.cat([sampler.encode("blurry"), sampler.encode(job.context.prompt)]) for job in jobs]
    with torch.no_grad():
        alone = [sampler.predict(plan.steps[0], latents[k : k + 1], torch.tensor(400), texts[k])
                 for k, plan in enumerate(plans)]
        together = sampler.predict_batch([plan.steps[0] for plan in plans], latents, torch.tensor(400), texts)
    for k in range(len(plans)):
        for got, expected in zip(together[k][0], alone[k][0]):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (together[0][0][1] - together[1][0][1]).abs().max() > 1e-4


class NaNForOneSet(METHODS.get("composite")):
    """Overflows for the images of one set only: what a huge LoRA scale does to one image of a batch."""

    bad_prompt = ""

    def combine(self, step, predictions, guidance_scale):
        noise = super().combine(step, predictions, guidance_scale)
        return torch.full_like(noise, float("nan")) if self.prompt == self.bad_prompt else noise

    def prepare(self, context):
        self.prompt = context.prompt
        return super().prepare(context)


def jobs_with_one_bad(method_class, bad, count, batch_world):
    """``count`` Composite jobs of different sets whose methods (``method_class``) misbehave for image ``bad``."""
    testbed, runner, sampler, images = batch_world
    jobs = jobs_for("composite", testbed, runner, sampler, images[:count])
    method_class.bad_prompt = jobs[bad].context.prompt
    for job in jobs:
        job.method = method_class()
    return jobs


def test_one_bad_image_fails_alone_in_its_batch(batch_world):
    testbed, runner, sampler, images = batch_world
    jobs = jobs_with_one_bad(NaNForOneSet, 1, 4, batch_world)
    outcomes = sampler.denoise_batch(jobs, testbed.negative_prompt, runner.settings)
    assert isinstance(outcomes[1].error, NonFiniteError)
    assert [outcome.error for k, outcome in enumerate(outcomes) if k != 1] == [None, None, None]
    alone = sampler.denoise_batch([jobs[2]], testbed.negative_prompt, runner.settings)[0]
    assert (alone.latents - outcomes[2].latents).abs().max() <= 1e-4


class RaisesForOneSet(NaNForOneSet):
    def combine(self, step, predictions, guidance_scale):
        if self.prompt == self.bad_prompt:
            raise RuntimeError("this image's combination broke")
        return super().combine(step, predictions, guidance_scale)


def test_an_error_mid_loop_fails_that_image_and_the_others_are_made_alone(batch_world):
    testbed, runner, sampler, images = batch_world
    jobs = jobs_with_one_bad(RaisesForOneSet, 0, 3, batch_world)
    outcomes = sampler.denoise_batch(jobs, testbed.negative_prompt, runner.settings)
    assert "broke" in str(outcomes[0].error)
    assert outcomes[1].error is None and outcomes[2].error is None and outcomes[2].latents is not None


def test_an_error_in_one_plan_fails_that_image_only(batch_world):
    testbed, runner, sampler, images = batch_world
    jobs = jobs_for("single", testbed, runner, sampler, images[:3])
    jobs[0].method = METHODS.get("single")(lora=7)  # no 8th LoRA in a set of 2: IndexError in prepare
    outcomes = sampler.denoise_batch(jobs, testbed.negative_prompt, runner.settings)
    assert isinstance(outcomes[0].error, IndexError)
    assert outcomes[1].error is None and outcomes[2].error is None


def test_ancestral_scheduler_draws_each_images_noise_from_its_generator(tiny_testbed_dir):
    testbed = tiny_testbed(tiny_testbed_dir, model={"base": str(tiny_testbed_dir / "base"), "scheduler": "euler_a",
                                                   "dtype": "float32"})
    sets = select_sets(testbed.sets(), limit=3)
    runner = make_runner(testbed, tiny_testbed_dir / "unused")
    sampler = runner.sampler()
    runner._adapters.ensure([lora for composition in sets for lora in composition.loras])
    images = [(composition, 0) for composition in sets]
    torch.manual_seed(1)  # the global generator must not matter
    alone = [sampler.denoise_batch([job], testbed.negative_prompt, runner.settings)[0].latents
             for job in jobs_for("merge", testbed, runner, sampler, images)]
    torch.manual_seed(2)
    together = sampler.denoise_batch(jobs_for("merge", testbed, runner, sampler, images), testbed.negative_prompt,
                                     runner.settings)
    for single, batched in zip(alone, together):
        assert (single - batched.latents).abs().max() <= 1e-4 * max(1.0, single.abs().max())


# -- the runner ------------------------------------------------------------------------------------------------


def test_batch_size_keeps_images_keys_and_resume(tiny_testbed_dir, tmp_path):
    testbed = tiny_testbed(tiny_testbed_dir)
    sets = select_sets(testbed.sets(), limit_per_n=3)
    one = make_runner(testbed, tmp_path / "one", "w_composite")
    assert run_all(one, sets).generated == len(sets)
    batched = make_runner(testbed, tmp_path / "four", "w_composite")
    batched.batch_size = 4
    assert run_all(batched, sets).generated == len(sets)
    records = {image.set_id: image for image in iter_images(tmp_path / "four")}
    for image in iter_images(tmp_path / "one"):
        other = records[image.set_id]
        assert image.key == other.key  # the batch is not part of what an image is
        assert image.metadata["batch"]["size"] == 1 and other.metadata["batch"]["size"] in (2, 4)
        pixels = [np.asarray(Image.open(path), dtype=np.int16) for path in (image.path, other.path)]
        assert np.abs(pixels[0] - pixels[1]).max() <= 1
    # a rerun at another batch size skips everything
    again = make_runner(testbed, tmp_path / "one", "w_composite")
    again.batch_size = 3
    summary = run_all(again, sets)
    assert (summary.skipped, summary.generated) == (len(sets), 0)


def test_a_kill_mid_batch_keeps_earlier_batches_and_resumes(tiny_testbed_dir, tmp_path, monkeypatch):
    testbed = tiny_testbed(tiny_testbed_dir)
    sets = select_sets(testbed.sets(), limit=5)
    runner = make_runner(testbed, tmp_path, "switch")
    runner.batch_size = 2
    calls = Counter()
    real = runner.generate_batch

    def killed_on_second(*args, **kwargs):
        calls["batches"] += 1
        if calls["batches"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_batch", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_all(runner, sets)
    assert len(list(iter_images(tmp_path))) == 2 and not list(tmp_path.rglob("*.tmp"))
    resumed = make_runner(testbed, tmp_path, "switch")
    resumed.batch_size = 2
    summary = run_all(resumed, sets)
    assert (summary.generated, summary.skipped) == (3, 2)


def test_a_bad_lora_fails_its_sets_images_only(tiny_testbed_dir, tmp_path):
    testbed = tiny_testbed(tiny_testbed_dir)
    sets = select_sets(testbed.sets(), n=[2], limit=4)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    bad = dataclasses.replace(sets[1], loras=(sets[1].loras[0], LoraSpec(
        "broken", "broken", sets[1].loras[1].category, ("broken",), broken)))
    sets = [sets[0], bad, sets[2], sets[3]]
    testbed.prompt_for = lambda composition: "a picture, " + ", ".join(p for l in composition.loras for p in l.trigger)
    runner = make_runner(testbed, tmp_path / "out", "merge")
    runner.batch_size = 4
    summary = run_all(runner, sets, seeds=(0, 1))
    assert summary.generated == 6 and summary.failed_count == 2
    failures = read_json(next((tmp_path / "out").rglob(f"{bad.id}/metadata.json")))["failed"]
    assert set(failures) == {"0", "1"} and "cannot read" in failures["0"]["reason"]


def test_batch_size_is_validated_and_never_names_a_sweep_point(tmp_path):
    from harness.config import sweep_label

    for wrong in (0, None, "8"):
        with pytest.raises(ConfigError, match="batch_size.*images per denoising loop"):
            RunSettings(output_dir=tmp_path, batch_size=wrong)
    assert sweep_label("merge", ["batch_size=8", "seeds=[0,1]"]) == "merge"


def test_shards_at_a_batch_size_make_the_images_of_the_whole_run(tiny_testbed_dir, tmp_path):
    testbed = tiny_testbed(tiny_testbed_dir)
    sets = select_sets(testbed.sets(), limit_per_n=3)
    whole = make_runner(testbed, tmp_path / "all", "merge")
    whole.batch_size = 4
    run_all(whole, sets)
    made = []
    for index in range(2):
        shard = make_runner(testbed, tmp_path / "shards", "merge")
        shard.batch_size = 2
        made.append(run_all(shard, select_sets(sets, shard=f"{index}/2")).generated)
    assert sum(made) == len(sets) and min(made) > 0
    twins = {image.set_id: image for image in iter_images(tmp_path / "all")}
    for image in iter_images(tmp_path / "shards"):
        pixels = [np.asarray(Image.open(path), dtype=np.int16) for path in (image.path, twins[image.set_id].path)]
        assert image.key == twins[image.set_id].key and np.abs(pixels[0] - pixels[1]).max() <= 1


def test_a_batch_too_big_for_the_device_is_made_in_halves_and_later_batches_stay_small(batch_world, monkeypatch):
    testbed, runner, sampler, images = batch_world
    alone = [sampler.denoise_batch([job], testbed.negative_prompt, runner.settings)[0].latents
             for job in jobs_for("composite", testbed, runner, sampler, images)]
    real_unet = sampler._unet
    widest = []

    def small_device(latents, timestep, text):
        if latents.shape[0] > 8:  # more rows than this "device" holds
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        widest.append(latents.shape[0])
        return real_unet(latents, timestep, text)

    monkeypatch.setattr(sampler, "_unet", small_device)
    monkeypatch.setattr(sampler, "batch_limit", None)
    outcomes = sampler.denoise_batch(jobs_for("composite", testbed, runner, sampler, images), testbed.negative_prompt,
                                     runner.settings)
    assert all(outcome.error is None for outcome in outcomes)
    for single, outcome in zip(alone, outcomes):
        assert (single - outcome.latents).abs().max() <= 1e-4 * max(1.0, single.abs().max())
    assert sampler.batch_limit is not None and sampler.batch_limit < len(images)
    assert max(widest) <= 8


def test_an_adapter_cache_smaller_than_a_set_is_refused_before_any_work(tiny_testbed_dir, tmp_path):
    from harness.runner import run

    testbed = tiny_testbed(tiny_testbed_dir)
    with pytest.raises(ConfigError, match="adapter_cache=2 holds fewer LoRAs than a set of this run has \\(3\\)"):
        run(testbed, METHODS.get("merge")(), "merge", RunSettings(output_dir=tmp_path, adapter_cache=2, n=(3,),
                                                                  device="cpu"))
    assert not list(tmp_path.rglob("*.png"))
